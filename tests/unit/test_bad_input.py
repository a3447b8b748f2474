"""Regressions for each bad input of issue #11: a clear error naming the file and what is wrong, no traceback,
nothing written, nothing hidden. (Times, control characters and null env values: test_config.py; pdsh and
mpirun quoting: test_launchers.py and tests/cluster/test_hostile_values.py; ports: test_rendezvous.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcft.errors import ConfigError, MaybeSubmittedError
from hpcft.slurm.client import parse_sbatch_parsable
from hpcft.spec.layering import load_job
from tests import fuzzing as F


@pytest.fixture
def work(tmp_path) -> Path:
    return F.make_workdir(tmp_path)


def submit_no_submit(work: Path, job: dict | bytes, *args: str) -> F.Outcome:
    (work / "job.yaml").write_bytes(job if isinstance(job, bytes) else yaml.safe_dump(job).encode())
    cwd = os.getcwd()
    os.chdir(work)
    try:
        return F.invoke(["submit", "job.yaml", "--runs-dir", str(work / "runs"), "--no-submit", *args])
    finally:
        os.chdir(cwd)


def refused(out: F.Outcome, *needles: str) -> None:
    F.assert_clean(out)
    assert out.exit_code == 1, out.output
    for needle in needles:
        assert needle in out.output, out.output


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"launch": {"python": "/nope/bin/python"}}, ["launch.python: /nope/bin/python is not an executable"]),
        ({"launch": {"launcher": "accelerate", "accelerate_config": "/nope.yaml"}}, ["accelerate_config: file not"]),
        ({"resources": {"nodes": 10**8}}, ["resources.nodes: must be at most 100000"]),
        ({"launch": {"env_passthrough": ["HPCFT_UNSET_SECRET"]}}, ["HPCFT_UNSET_SECRET is not set in this shell"]),
        ({"launch": {"setup": ["export HF_TOKEN=hf_" + "a" * 34]}}, ["launch.setup[0]: holds what looks like a token"]),
        ({"resources": {"extra_sbatch": ["--comment=WANDB_API_KEY=abc123"]}}, ["extra_sbatch[0]: holds what looks"]),
        ({"launch": {"env": {"HF_TOKEN": "x"}}}, ["launch.env.HF_TOKEN: looks like a secret"]),
        # A command that starts its own ranks, under a launcher that starts ranks (issue #25, item 14).
        (
            {"launch": {"command": ["trl", "sft", "--output_dir", "{output_dir}"]}},
            [
                "launch.command: `trl sft` starts its own processes, and launcher torchrun would run it in every rank",
                "HINT: --launcher none",
                "-- trl sft --output_dir {output_dir}",
            ],
        ),
        (
            {"launch": {"launcher": "deepspeed", "command": ["llamafactory-cli", "train", "cfg.yaml"]}},
            ["`llamafactory-cli train` starts its own processes, and launcher deepspeed"],
        ),
        ({"launch": {"command": ["-m", "torch.distributed.run", "t.py"]}}, ["`-m torch.distributed.run` starts"]),
        ({"launch": {"command": ["/opt/env/bin/accelerate", "launch", "t.py"]}}, ["`accelerate launch` starts"]),
        (
            {"launch": {"backend": "submitit"}, "run": {"restart": "chain"}},
            [
                "run.restart: chain submits the run's job.sbatch again",
                "submitit backend writes none",
                "HINT: --backend sbatch",
            ],
        ),
    ],
)
def test_bad_jobs_are_refused_with_the_field_and_nothing_is_written(work, change, needles):
    job = F.base_job()
    for section, values in change.items():
        job[section] = {**job.get(section, {}), **values}
    refused(submit_no_submit(work, job), *needles)
    assert not list((work / "runs").iterdir())
    if "hf_" in json.dumps(change):
        assert "hf_aaaa" not in submit_no_submit(work, job).output  # the error never repeats a secret


@pytest.mark.parametrize(
    "command", [["trl", "sft", "--x", "1"], ["llamafactory-cli", "train", "c.yaml"], ["torchrun", "t.py"]]
)
def test_a_self_launching_tool_is_accepted_with_launcher_none(work, command):
    job = F.base_job()
    job["launch"] = {**job.get("launch", {}), "launcher": "none", "command": command}
    out = submit_no_submit(work, job)
    assert out.exit_code == 0, out.output


@pytest.mark.parametrize("command", [["trl", "env"], ["accelerate", "config"], ["-m", "trl.scripts.sft"], ["my.py"]])
def test_commands_that_do_not_launch_ranks_run_under_torchrun(work, command):
    job = F.base_job()
    job["launch"] = {**job.get("launch", {}), "command": command}
    assert "starts its own processes" not in submit_no_submit(work, job).output


def test_tokenizers_parallelism_is_no_secret(work):
    job = {**F.base_job(), "launch": {"backend": "sbatch", "env": {"TOKENIZERS_PARALLELISM": "false"}}}
    out = submit_no_submit(work, job)
    assert out.exit_code == 0, out.output


def test_a_job_file_that_is_not_utf8_names_the_line(work):
    refused(submit_no_submit(work, b"run:\n  name: f\xfczz\n"), "line 2: not UTF-8 text", "HINT: save the file")


def test_a_key_written_twice_is_an_error_not_the_last_one_winning(work):
    refused(submit_no_submit(work, b"resources:\n  nodes: 1\nresources:\n  nodes: 2\n"), "'resources' appears twice")


def test_a_model_config_that_is_a_list_is_refused(work):
    (work / "model" / "config.json").write_text("[1, 2]")
    refused(submit_no_submit(work, F.base_job()), "config.json holds a JSON list, not an object")


def test_config_refuses_negative_machines_and_a_missing_directory(tmp_path):
    out = F.invoke(["config", "--num-machines", "-3", "--out", str(tmp_path / "a.yaml"), "--non-interactive"])
    assert out.exit_code == 2 and "-3 is not in the range x>=1" in out.output
    out = F.invoke(["config", "--out", str(tmp_path / "no" / "a.yaml"), "--non-interactive"])
    refused(out, "does not exist", "HINT: mkdir -p")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_numbers_that_are_not_finite_are_usage_errors(work, value):
    """Found by benchmarks/fuzz.py: Click's FloatRange lets nan through (`--gpu-mem nan` was a traceback)."""
    (work / "job.yaml").write_text(yaml.safe_dump(F.base_job()))
    for args in (["plan", str(work / "job.yaml"), "--gpu-mem", value], ["status", "--watch", "--interval", value]):
        out = F.invoke(args)
        F.assert_clean(out)
        assert out.exit_code == 2 and "Invalid value for" in out.output, out.output


def test_unreadable_sbatch_output_says_a_job_may_be_queued():
    with pytest.raises(MaybeSubmittedError, match="a job may be queued"):
        parse_sbatch_parsable("Submitted batch job (site wrapper)\n")


@pytest.mark.parametrize(
    ("name", "content", "command", "needle"),
    [
        ("state.json", "[]", "status", "state.json is damaged: expected a JSON object, got list"),
        ("state.json", "{}", "status", "state.json is damaged: no 'backend'"),
        ("state.json", '{"backend": "sbatch", "jobs": null}', "status", "jobs: expected list, got null"),
        ("state.json", '{"backend": "sbatch", "jobs": [{"pid": 1}]}', "logs", "jobs[0]: expected an object"),
        ("spec.yaml", "\x00\x01\x02 binary", "resume", "spec.yaml"),
        ("spec.yaml", "run: [unclosed", "resume", "not valid YAML"),
    ],
)
def test_a_damaged_run_file_is_named_and_other_runs_still_show(tmp_path, name, content, command, needle):
    runs = tmp_path / "runs"
    damaged = F.make_run(F.make_workdir(tmp_path / "a"))
    healthy = F.make_run(F.make_workdir(tmp_path / "b"), "healthy")
    runs.mkdir()
    for run in (damaged, healthy):
        run.rename(runs / run.name)
    (runs / damaged.name / name).write_text(content)
    env = {"PATH": str(F.fake_slurm(tmp_path))}
    listing = F.invoke(["status", "--runs-dir", str(runs)], env=env)
    F.assert_clean(listing)
    assert healthy.name in listing.output, listing.output
    if name == "state.json":
        assert "DAMAGED" in listing.output, listing.output
    before = F.snapshot(runs)
    refused(F.invoke([command, damaged.name, "--runs-dir", str(runs)], env=env), needle)
    assert F.snapshot(runs) == before


def test_a_run_without_state_json_yet_does_not_hide_the_others(tmp_path):
    """A `submit` writing its run directory right now: spec.yaml is there, state.json not yet."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run in (F.make_run(F.make_workdir(tmp_path / "a")), F.make_run(F.make_workdir(tmp_path / "b"), "healthy")):
        run.rename(runs / run.name)
    (next(runs.glob("fuzz-*")) / "state.json").unlink()
    for command in (["list"], ["status"], ["status", "--json"]):
        out = F.invoke([*command, "--runs-dir", str(runs)], env={"PATH": str(F.fake_slurm(tmp_path))})
        F.assert_clean(out)
        assert out.exit_code == 0 and "healthy-" in out.output and "DAMAGED" in out.output, out.output
    rows = {r["run"].split("-")[0]: r for r in json.loads(out.output)}
    assert rows["fuzz"]["reason"].startswith("no state.json in the run directory: not an hpcft run directory")


def test_metrics_lines_that_are_not_objects_or_hold_text_losses_are_skipped(tmp_path):
    from hpcft.rundir.store import read_metrics

    (tmp_path / "metrics.jsonl").write_text('[1]\n"x"\n{"step": "3", "loss": "high"}\n{"step": 4, "loss": 1.5}\n\xff\n')
    assert read_metrics(tmp_path) == [{}, {"step": 4, "loss": 1.5}]


def test_a_manifest_without_its_step_is_no_complete_checkpoint(tmp_path):
    from hpcft.rundir import checkpoints

    run = F.make_run(F.make_workdir(tmp_path))
    ckpt = run / "checkpoints" / "checkpoint-2"
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    del manifest["step"]
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    assert "step None" in checkpoints.problem(ckpt)
    assert checkpoints.newest_complete(run / "checkpoints") is None


def test_finished_holding_text_does_not_break_resume_planning(tmp_path):
    from hpcft.plan.resume import _check_more_to_do
    from hpcft.rundir.store import load_run_spec

    run = F.make_run(F.make_workdir(tmp_path))
    (run / "FINISHED").write_text("done, see notes\n")
    _check_more_to_do(run, load_run_spec(run))  # no ValueError: the trainer knows where it stopped


def test_a_job_file_without_its_model_config_is_refused_before_anything_is_written(work):
    (work / "model" / "config.json").unlink()
    refused(submit_no_submit(work, F.base_job()), "is not a model directory")


def test_local_cancel_signals_only_its_own_runner(tmp_path):
    """A pid in state.json that is not this run's runner (reused, or damaged) is never signalled."""
    from hpcft.backends import local
    from hpcft.errors import RunError

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        job = {"id": f"local-{other.pid}", "pid": other.pid, "host": socket.gethostname()}
        with pytest.raises(RunError, match="is not running on this host"):
            local.cancel(job)
        assert other.poll() is None, "a process that is not hpcft's runner was signalled"
        with pytest.raises(RunError):
            local.cancel({**job, "pid": 1})
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.wait()


def test_an_override_with_a_time_stays_a_time(work):
    job = work / "j.yaml"
    job.write_text(yaml.safe_dump(F.base_job()))
    assert load_job(job, overrides=["resources.time=12:00:00"]).resources.time == "12:00:00"
    with pytest.raises(ConfigError):
        load_job(job, overrides=["resources.time=soon"])


# Issue #25, item 18: a path no system call can take ended `plan` in `OSError: [Errno 36] File name too long`.
LONG_PATH = "/" + "x" * 4999  # 5,000 characters: over Linux's PATH_MAX (4,096 bytes with the NUL)


@pytest.mark.parametrize(
    "key",
    ["train.model", "train.data.train", "train.data.eval", "train.output", "train.tokenizer", "train.data.cache_dir",
     "train.deepspeed_config", "train.offload.nvme_path", "launch.accelerate_config", "launch.python",
     "launch.command"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["plan", "submit"])
def test_a_path_too_long_for_the_system_is_the_fields_problem(work, key, command):
    job = F.base_job()
    F.set_path(job, key, [LONG_PATH + ".py"] if key == "launch.command" else LONG_PATH)
    if command == "submit":
        out = submit_no_submit(work, job)
    else:
        (work / "job.yaml").write_text(yaml.safe_dump(job))
        out = F.invoke(["plan", str(work / "job.yaml"), "--runs-dir", str(work / "runs")])
    length = 5003 if key == "launch.command" else 5000
    refused(out, f"{key}: path too long ({length} characters; a path holds at most 4095 bytes)")
    assert LONG_PATH not in out.output  # named by its field and length, not repeated
    assert not list((work / "runs").iterdir())


def test_a_name_too_long_and_a_run_name_too_long_are_refused_with_the_others(work):
    job = F.base_job()
    F.set_path(job, "train.model", "/tmp/" + "m" * 300)
    F.set_path(job, "train.output", LONG_PATH)
    F.set_path(job, "run.name", "n" * 250)
    F.set_path(job, "train.lora.load_in_4bit", True)  # a rule of the recipe, reported with them
    out = submit_no_submit(work, job)
    refused(
        out,
        "4 problems in the job description",
        "train.model: a name in the path is too long (300 characters between two slashes, at most 255 bytes",
        "train.output: path too long (5000 characters",
        "run.name: too long for the run directory's name NAME-YYYYmmdd-HHMMSS (266 bytes, at most 255)",
        "train.lora.load_in_4bit: QLoRA trains LoRA adapters",
    )
    assert not list((work / "runs").iterdir())


def test_a_path_the_system_cannot_look_at_is_the_fields_problem(work, monkeypatch):
    """A failing shared filesystem (EIO on stat): the field's problem, with the other inputs still checked."""
    import errno

    model, real_stat = str(work / "model"), os.stat

    def failing_stat(path, *args, **kwargs):
        if os.fspath(path).startswith(model):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", failing_stat)
    job = F.base_job()
    job["train"]["data"]["eval"] = "data/missing.jsonl"
    out = submit_no_submit(work, job)
    refused(out, "2 problems in the job description",
            f"train.model: cannot look at {work}/model/config.json: Input/output error",
            f"train.data.eval: file not found: {work}/data/missing.jsonl")  # fmt: skip
    assert not list((work / "runs").iterdir())


def _resume_plan(run, **kwargs):
    from datetime import datetime

    from hpcft.plan.resume import plan_resume

    return plan_resume(run, python=sys.executable, now=datetime(2026, 1, 2), **kwargs)


def test_resume_checks_the_secrets_the_job_passes_by_name(tmp_path, monkeypatch):
    # issue #25 item 15: a job resumed from a shell without HF_TOKEN would die only after its queue wait.
    run = F.make_run(F.make_workdir(tmp_path))
    monkeypatch.delenv("HPCFT_RESUME_SECRET", raising=False)
    with pytest.raises(ConfigError) as e:
        _resume_plan(run, overrides=["launch.env_passthrough=[HPCFT_RESUME_SECRET]"])
    assert "launch.env_passthrough: HPCFT_RESUME_SECRET is not set in this shell" in str(e.value)
    monkeypatch.setenv("HPCFT_RESUME_SECRET", "x")
    assert _resume_plan(run, overrides=["launch.env_passthrough=[HPCFT_RESUME_SECRET]"]).checkpoint.step == 2


def test_resume_of_a_users_command_refuses_a_checkpoint_nothing_would_use(tmp_path):
    from hpcft.errors import RunError

    run = F.make_run(F.make_workdir(tmp_path))
    with pytest.raises(RunError, match=r"--checkpoint 7: .* runs your own command, which picks its checkpoint"):
        _resume_plan(run, overrides=["launch.command=[my-trainer, --out, '{output_dir}']"], checkpoint=7)
    assert _resume_plan(run, overrides=["launch.command=[my-trainer]"]).checkpoint is None  # no pin: fine
