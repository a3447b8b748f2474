"""Working from a workstation (hpcft.remote, hpcft.rundir.intents): the decisions, without a network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcft.errors import ConfigError, HpcftError, RunError
from hpcft.remote import clusters, forward, ssh, stage
from hpcft.rundir import intents


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # content keys remembered here, not in ~/.cache


GOOD = """
default: big
clusters:
  big:
    host: me@login.example.org
    runs_dir: /scratch/me/runs
    hpcft: ~/venv/bin/hpcft
    ssh_options: {IdentityFile: ~/.ssh/big, Port: 2222}
    env: {SLURM_CONF: /etc/slurm/slurm.conf}
  small:
    host: small-alias
    runs_dir: /home/me/runs
    staging: /tmp/me/staging
"""


def test_a_config_file_names_clusters_with_their_defaults():
    config = clusters.parse(GOOD)
    big, small = config.clusters["big"], config.clusters["small"]
    assert config.default == "big"
    assert big.host == "me@login.example.org" and big.hpcft == "~/venv/bin/hpcft"
    assert big.ssh_options == {"IdentityFile": "~/.ssh/big", "Port": "2222"}
    assert big.staging_dir == "/scratch/me/runs/.staging" and small.staging_dir == "/tmp/me/staging"
    assert small.hpcft == "hpcft" and small.env == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clusters: {a: {runs_dir: /r}}", "clusters.a.host: required"),
        ("clusters: {a: {host: h, runs_dir: runs}}", "clusters.a.runs_dir: 'runs' must be an absolute path"),
        ("clusters: {a: {host: h, runs_dir: /r, ssh_options: {'-oProxyCommand': x}}}", "not a valid ssh option"),
        ("clusters: {a: {host: h, runs_dir: /r, env: {'A B': x}}}", "not a valid environment variable name"),
        ('clusters: {a: {host: h, runs_dir: "/r\\nrm -rf /"}}', "control character"),
        ("clusters: {a: {host: -oProxyCommand=x, runs_dir: /r}}", "not a host ssh can be given"),
        ("clusters: {a: {host: h, runs_dir: /r, hots: x}}", "clusters.a.hots: unknown key"),
        ("default: b\nclusters: {a: {host: h, runs_dir: /r}}", "default: 'b' names no cluster"),
        ("clusters: [a, b]", "clusters: expected a mapping"),
        ("clusters: {a: {host: h, runs_dir: /r}", "not valid YAML"),
        ("- just a list", "expected a mapping (default, clusters)"),
    ],
)
def test_a_damaged_config_is_an_error_naming_the_key(text, expected):
    with pytest.raises(ConfigError) as e:
        clusters.parse(text, "clusters.yaml")
    assert expected in str(e.value) and "clusters.yaml" in str(e.value)


def test_the_cluster_comes_from_the_option_or_the_environment(tmp_path):
    config = clusters.parse(GOOD)
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert clusters.chosen(None, config, env) is None
    assert clusters.chosen("small", config, env).name == "small"
    assert clusters.chosen(None, config, {**env, "HPCFT_CLUSTER": "big"}).name == "big"
    assert clusters.chosen("default", config, env).name == "big"
    assert clusters.chosen("local", config, {**env, "HPCFT_CLUSTER": "big"}) is None
    with pytest.raises(HpcftError, match=r"no cluster named 'nope' .*known: big, small"):
        clusters.chosen("nope", config, env)


def test_saving_and_loading_give_the_same_clusters(tmp_path):
    path = tmp_path / "hpcft" / "clusters.yaml"
    config = clusters.parse(GOOD)
    clusters.save(config, path)
    assert clusters.load(path) == config
    assert path.stat().st_mode & 0o777 == 0o600
    assert clusters.load(tmp_path / "absent.yaml").clusters == {}


WORDS = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
                 min_size=1, max_size=5)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(words=WORDS, value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8))
def test_a_remote_command_line_gives_the_remote_program_exactly_its_words(words, value):
    """What ssh hands the login shell: a real sh must give printf back the words and the variable unchanged."""
    line = ssh.remote_command(["printf", "%s\\0", *words], {"HPCFT_X": value})
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout
    assert out.decode("utf-8", "surrogateescape").split("\0")[:-1] == words
    echo = subprocess.run(["sh", "-c", ssh.remote_command(["sh", "-c", 'printf %s "$HPCFT_X"'], {"HPCFT_X": value})],
                          capture_output=True, check=True).stdout  # fmt: skip
    assert echo.decode("utf-8", "surrogateescape") == value


def test_a_home_relative_hpcft_stays_relative_to_the_remote_home():
    assert ssh.remote_command(["~/venv/bin/hpcft", "status"]) == '"$HOME"/venv/bin/hpcft status'
    out = subprocess.run(["sh", "-c", ssh.remote_command(["~/x y"])], capture_output=True, text=True,
                         env={"HOME": "/nonexistent-home", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "/nonexistent-home/x y" in out.stderr  # one word, under $HOME


def test_ssh_gets_the_clusters_options_and_a_shared_connection(tmp_path):
    cluster = clusters.parse(GOOD).clusters["big"]
    argv = ssh.ssh_argv(cluster, control=tmp_path)
    assert argv[0] == "ssh" and "ControlMaster=auto" in argv and f"ControlPath={tmp_path}/%C" in argv
    assert f"IdentityFile={Path('~/.ssh/big').expanduser()}" in argv and "Port=2222" in argv
    assert cluster.host not in argv  # the host is added by the caller, after every option


def test_rsync_stats_give_the_bytes_sent():
    # recorded: rsync 3.2.7 --stats of a 1.7 MB demo model copied to the lab's login node
    stats = ("Number of files: 7 (reg: 6, dir: 1)\nTotal file size: 1,772,080 bytes\n"
             "Total bytes sent: 1,773,118\nTotal bytes received: 133\n")  # fmt: skip
    assert ssh.bytes_sent(stats) == 1_773_118
    assert ssh.bytes_sent("") == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["RUN", "--cluster", "lab", "-f"], ["RUN", "-f"]),
        (["--cluster=lab", "RUN"], ["RUN"]),
        (["RUN", "--", "--cluster", "x"], ["RUN", "--", "--cluster", "x"]),
    ],
)
def test_forwarded_commands_lose_only_their_cluster_option(args, expected):
    assert forward.strip_cluster(args) == expected


def _project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    (p / "model").mkdir(parents=True)
    (p / "model" / "config.json").write_text("{}")
    (p / "data").mkdir()
    (p / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    (p / "train.py").write_text("print(1)\n")
    (p / "job.yaml").write_text(
        "run: {name: x}\ntrain:\n  model: model\n  tokenizer: /cluster/tokenizers/llama\n"
        "  data: {train: data/train.jsonl}\n  output: /scratch/out\n"
        "launch:\n  command: [train.py, --cfg, data/train.jsonl]\n"
    )
    return p


def test_the_files_a_job_names_are_staged_by_content_and_the_job_file_rewritten(tmp_path):
    p = _project(tmp_path)
    sp = stage.plan_stage(str(p / "job.yaml"), staging="/st", command=["train.py", "--lr", "1e-4"], cwd=p)
    job = stage.yaml.safe_load(sp.job_text)
    model_key = stage.content_key(p / "model")[0]
    assert job["train"]["model"] == f"/st/{model_key}/model"
    assert job["train"]["data"]["train"] == f"/st/{stage.content_key(p / 'data' / 'train.jsonl')[0]}/train.jsonl"
    assert job["train"]["tokenizer"] == "/cluster/tokenizers/llama"  # not here: the cluster's own, referenced
    assert ("train.tokenizer", "/cluster/tokenizers/llama") in sp.referenced
    assert job["train"]["output"] == "/scratch/out"
    assert job["launch"]["command"][0].endswith("/train.py") and job["launch"]["command"][2].endswith("/train.jsonl")
    assert sp.command[0].startswith("/st/") and sp.command[1:] == ["--lr", "1e-4"]  # 1e-4: no such file
    assert len(sp.unique_items()) == 3  # model, data (named twice), script (named twice)
    assert sp.job_remote == f"/st/{sp.job_key}/job.yaml"


def test_a_content_key_changes_with_the_content_and_only_with_it(tmp_path):
    p = _project(tmp_path)
    key = stage.content_key(p / "model")
    (p / "model" / "config.json").touch()  # a new mtime, same bytes
    assert stage.content_key(p / "model") == key
    (p / "model" / "config.json").write_text('{"a": 1}')
    assert stage.content_key(p / "model") != key
    (p / "model" / "config.json").write_text("{}")
    (p / "model" / "config.json").chmod(0o755)
    assert stage.content_key(p / "model") != key  # an executable bit is content too (scripts)


def test_relative_outputs_and_missing_relative_inputs_are_refused(tmp_path):
    p = _project(tmp_path)
    (p / "job.yaml").write_text("train:\n  model: model\n  data: {train: nowhere.jsonl}\n  output: out\n")
    with pytest.raises(ConfigError) as e:
        stage.plan_stage(str(p / "job.yaml"), staging="/st", cwd=p)
    text = str(e.value)
    assert "train.data.train: nowhere.jsonl" in text and "exists neither here nor as a cluster path" in text
    assert "train.output: 'out' is relative" in text
    with pytest.raises(ConfigError, match=r"-o run\.runs_dir=runs: relative"):
        stage.plan_stage(None, staging="/st", overrides=["run.runs_dir=runs"], cwd=p)


def test_overrides_and_flags_naming_local_files_are_staged(tmp_path):
    p = _project(tmp_path)
    (p / "accel.yaml").write_text("distributed_type: MULTI_CPU\n")
    sp = stage.plan_stage(None, staging="/st", overrides=["train.model=model", "train.lr=1e-4"], cwd=p,
                          accelerate_config="accel.yaml", profile="/cluster/profile.yaml")  # fmt: skip
    assert sp.overrides[0].startswith("train.model=/st/") and sp.overrides[1] == "train.lr=1e-4"
    assert sp.accelerate_config.startswith("/st/") and sp.profile == "/cluster/profile.yaml"


# --- the cluster side's journal -------------------------------------------------------------------------------

ID = "0123456789abcdef0123456789abcdef"


def test_an_intent_records_its_run_then_its_job(tmp_path):
    with intents.claim(tmp_path, ID) as intent:
        assert (intent.run, intent.job) == (None, None)
        intent.begin("/runs/a")
    with intents.claim(tmp_path, ID) as intent:
        assert (intent.run, intent.job) == ("/runs/a", None)
        intent.done("42")
    with intents.claim(tmp_path, ID) as intent:
        assert (intent.run, intent.job) == ("/runs/a", "42")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "0123", "G" * 32, ""])
def test_an_intent_id_is_32_hex_digits(tmp_path, bad):
    with pytest.raises(HpcftError, match="expected 32 hexadecimal digits"), intents.claim(tmp_path, bad):
        pass


def test_a_retry_waits_for_the_attempt_still_holding_the_intent(tmp_path):
    """A real second process holds the lock (the first attempt, still in sbatch): the retry waits, then times out."""
    (tmp_path / intents.INTENTS_DIR).mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(30)", str(tmp_path / intents.INTENTS_DIR / f"{ID}.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        waiting = pytest.raises(RunError, match="an earlier attempt of this submission still holds")
        with waiting, intents.claim(tmp_path, ID, wait_s=0.6):
            pass
        assert time.monotonic() - t0 >= 0.6
    finally:
        holder.kill()
        holder.wait()
    with intents.claim(tmp_path, ID, wait_s=5):  # the kernel dropped the dead holder's lock
        pass


class _Plan:
    def __init__(self, runs: Path, run_dir: str):
        self.run_dir = run_dir
        self.spec = type("S", (), {"run": type("R", (), {"runs_dir": str(runs)})()})()


@pytest.fixture
def once(tmp_path, monkeypatch):
    """``submit_once`` with the effects recorded: what was submitted or started where."""
    from hpcft.backends import actions

    calls: list = []
    slurm_jobs: dict = {}

    def submit(plan):
        Path(plan.run_dir).mkdir()
        (Path(plan.run_dir) / "state.json").write_text('{"jobs": []}')
        calls.append(("submit", plan.run_dir))
        return Path(plan.run_dir), "100"

    def start_in(plan, run):
        calls.append(("start_in", str(run)))
        return "101"

    monkeypatch.setattr(actions, "submit", submit)
    monkeypatch.setattr(actions, "start_in", start_in)
    monkeypatch.setattr("hpcft.slurm.client.user_jobs", lambda prefix: slurm_jobs)
    new = str(tmp_path / "run-new")
    return lambda: actions.submit_once(lambda rd: _Plan(tmp_path, rd or new), ID), calls, slurm_jobs, tmp_path


def test_a_first_attempt_submits_and_a_second_reports(once):
    go, calls, _, runs = once
    assert go() == (runs / "run-new", "100", False)
    assert go() == (runs / "run-new", "100", True)
    assert calls == [("submit", str(runs / "run-new"))]


def test_an_attempt_cut_off_after_sbatch_finds_the_job_by_its_comment(once):
    go, calls, slurm_jobs, runs = once
    run = runs / "run-old"
    run.mkdir()
    (run / "state.json").write_text('{"jobs": []}')
    with intents.claim(runs, ID) as intent:
        intent.begin(str(run))  # the first attempt: run directory written, sbatch ran, no record
    slurm_jobs["77"] = str(run)
    assert go() == (run, "77", True)
    assert calls == []
    assert json.loads((runs / intents.INTENTS_DIR / f"{ID}.json").read_text())["job"] == "77"


def test_an_attempt_cut_off_before_sbatch_starts_the_job_in_its_run_directory(once):
    go, calls, _, runs = once
    run = runs / "run-old"
    run.mkdir()
    (run / "state.json").write_text('{"jobs": []}')
    with intents.claim(runs, ID) as intent:
        intent.begin(str(run))
    assert go() == (run, "101", False)
    assert calls == [("start_in", str(run))]


def test_an_attempt_whose_run_directory_was_removed_submits_anew(once):
    go, calls, _, runs = once
    with intents.claim(runs, ID) as intent:
        intent.begin(str(runs / "run-gone"))  # sbatch failed; submit removed the directory
    assert go() == (runs / "run-new", "100", False)
    assert calls == [("submit", str(runs / "run-new"))]


def test_a_submission_survives_its_connection_closing(tmp_path):
    """Output to a closed pipe and SIGHUP do not stop the block (a real child process, its stdout closed)."""
    code = (
        "import os, signal, sys, time\n"
        "from hpcft.rundir import intents\n"
        "with intents.survive_hangup():\n"
        "    sys.stdout.write('x' * 100000); sys.stdout.flush()\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    open(sys.argv[1], 'w').write('finished')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "done")], stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone
    proc.wait(timeout=60)
    assert (tmp_path / "done").read_text() == "finished"


def test_a_cluster_whose_hpcft_cannot_read_this_ones_job_files_is_refused_with_the_fix():
    from hpcft import __version__
    from hpcft.remote import check
    from hpcft.spec.io import SPEC_FORMAT

    cluster = clusters.parse(GOOD).clusters["big"]
    ok = {"version": "9.9.9", "spec_format": SPEC_FORMAT, "sbatch": "/usr/bin/sbatch"}
    assert check.compatible(cluster, ok) is None
    assert check.compatible(cluster, {**ok, "spec_format": SPEC_FORMAT + 1}) is None  # newer reads older
    old = check.compatible(cluster, {**ok, "spec_format": SPEC_FORMAT - 1, "version": "0.0.1"})
    assert f"format {SPEC_FORMAT - 1}" in old and f"~/venv/bin/pip install -U 'hpcft=={__version__}'" in old
    assert "no sbatch" in check.compatible(cluster, {**ok, "sbatch": None})


# --- the commands, without a network ------------------------------------------------------------------------


def _cli(tmp_path, *args):
    from tests.conftest import hpcft

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_STATE_HOME": str(tmp_path / "state"), "HPCFT_CLUSTER": ""}
    return hpcft(*args, env=env, check=False)


def test_clusters_are_added_checked_for_mistakes_and_removed(tmp_path):
    empty = _cli(tmp_path, "clusters")
    assert empty.returncode == 0 and "no clusters yet" in empty.stdout
    bad = _cli(tmp_path, "clusters", "add", "x", "--host", "h", "--runs-dir", "runs", "--ssh-option", "Port")
    assert bad.returncode == 2 and "'Port': expected NAME=VALUE" in bad.stderr  # nothing written
    bad = _cli(tmp_path, "clusters", "add", "x", "--host", "h", "--runs-dir", "runs")
    assert bad.returncode == 1 and "clusters.x.runs_dir: 'runs' must be an absolute path" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "cfg" / "hpcft" / "clusters.yaml").exists()
    ok = _cli(tmp_path, "clusters", "add", "x", "--host", "me@login", "--runs-dir", "/r", "--ssh-option", "Port=2",
              "--default")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    again = _cli(tmp_path, "clusters", "add", "x", "--host", "h", "--runs-dir", "/r")
    assert again.returncode == 1 and "exists already" in again.stderr and "--replace" in again.stderr
    listed = _cli(tmp_path, "clusters", "--no-check")
    assert "x (default)" in listed.stdout and "me@login" in listed.stdout
    assert _cli(tmp_path, "clusters", "remove", "x").returncode == 0
    assert clusters.load(tmp_path / "cfg" / "hpcft" / "clusters.yaml").clusters == {}


def test_an_unknown_cluster_is_a_clear_error_before_anything_runs(tmp_path):
    proc = _cli(tmp_path, "status", "--cluster", "nope")
    assert proc.returncode == 2 and "no cluster named 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "cfg" / "hpcft").mkdir(parents=True)
    (tmp_path / "cfg" / "hpcft" / "clusters.yaml").write_text("clusters: {a: {host: h}}\n")
    damaged = _cli(tmp_path, "logs", "RUN", "--cluster", "a")
    assert damaged.returncode == 2 and "clusters.a.runs_dir: required" in damaged.stderr


def test_a_followed_log_reconnects_after_a_drop_and_shows_no_line_twice(tmp_path, monkeypatch, capfd):
    """A stand-in ssh on PATH: the first connection prints lines 1-5 and drops (exit 255, as ssh does), the second
    prints the whole log again, 1-8, as a restarted `hpcft logs -f` does."""
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nif [ -e {tmp_path}/dropped ]; then seq 1 8; exit 0; fi\n"
                    f"touch {tmp_path}/dropped; seq 1 5; echo 'ssh: connection reset' >&2; exit 255\n")  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(forward, "RECONNECT_S", 0.0)
    cluster = clusters.parse(GOOD).clusters["small"]
    assert forward.run_here(cluster, "logs", ["RUN", "-f", "--cluster", "small"], reconnect=True) == 0
    captured = capfd.readouterr()
    assert [line for line in captured.out.splitlines()] == [str(i) for i in range(1, 9)]
    assert "connecting again (1/4)" in captured.err


def test_a_sweep_whose_earlier_try_recorded_no_array_is_reported_not_repeated(tmp_path, monkeypatch):
    from hpcft.backends import sweep as sweep_backend
    from hpcft.cli.sweep import _sweep_once

    submitted = []
    monkeypatch.setattr(sweep_backend, "submit", lambda *a: submitted.append(a) or ("5", []))
    folder = tmp_path / "x-sweep-1"
    folder.mkdir()
    with intents.claim(tmp_path, ID) as intent:
        intent.begin(str(folder))  # the first try wrote the sweep; its process died before recording the array
    with pytest.raises(RunError, match="recorded no job array: it may have been submitted"):
        _sweep_once(ID, [], [], tmp_path / "x-sweep-2", "x", None)
    assert submitted == []


def test_an_unchanged_input_is_not_read_again_for_its_key(tmp_path, monkeypatch):
    p = _project(tmp_path)
    first = stage.cached_content_key(p / "model")
    reads = []
    monkeypatch.setattr(stage, "content_key", lambda path: reads.append(path) or ("x", 0))
    assert stage.cached_content_key(p / "model") == first and reads == []  # metadata only
    (p / "model" / "config.json").write_text('{"a": 1}')  # new size and time: read again
    assert stage.cached_content_key(p / "model") == ("x", 0) and reads == [p / "model"]


def test_old_intent_records_are_pruned_recent_ones_kept(tmp_path):
    import os

    folder = tmp_path / intents.INTENTS_DIR
    folder.mkdir()
    old, recent = folder / ("a" * 32 + ".json"), folder / ("b" * 32 + ".json")
    old.write_text("{}")
    recent.write_text("{}")
    month = time.time() - 31 * 86400
    os.utime(old, (month, month))
    with intents.claim(tmp_path, ID):
        pass
    assert not old.exists() and recent.exists()
