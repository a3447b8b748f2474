"""From a workstation (#29): this machine is the workstation, the lab's login node (``lab-login``, user ``hpcft``,
sshd and SLURM clients, no slurmd) the cluster's front door. Job files, data and scripts exist only here; every
command goes over ssh; jobs run as ``hpcft`` on the lane's nodes.

The faults are real: the ssh connection is killed (its sshd on the login node, or the workstation's ssh master,
SIGKILL) at each point of a submission, by the scaffolding in ``remote_faults/`` — a wrapper around the real
sbatch on the login node, a wrapper around the real ssh here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import hpcft, require, wait_until

FAULTS = Path(__file__).parent / "remote_faults"
LOGIN = "hpcft@lab-login"
LAB_DIR = Path(os.environ.get("SLURMLAB_DIR", "/tmp/hpcft-lab"))
KEY = LAB_DIR / "login" / "id_ed25519"
KNOWN = LAB_DIR / "login" / "known_hosts"
REMOTE_HPCFT = "/home/hpcft/venv/bin/hpcft"


@dataclass
class Workstation:
    root: Path
    env: dict
    runs: str  # the runs directory on the cluster
    shim: Path  # the login node's sbatch wrapper's folder (MODE)
    local_ssh: Path  # this side's ssh wrapper's folder (AFTER, DOWN)

    def hpcft(self, *args, cwd=None, check=True, timeout=600):
        return hpcft(*args, env=self.env, cwd=cwd or self.root, check=check, timeout=timeout)


def _login(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", str(KEY), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={KNOWN}",
                           "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", LOGIN, "--", *argv],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def ws(lab):
    """The workstation's hpcft config naming the lab's login node as the cluster ``lab`` (on this lane's nodes)."""
    require(KEY.is_file() and _login("true").returncode == 0,
            f"the lab's login node does not answer ({LOGIN}); run scripts/dev-cluster up")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="hpcft-ws-", dir="/tmp"))
    shim, local_ssh = root / "shim", root / "ssh"
    shim.mkdir(mode=0o755)
    local_ssh.mkdir()
    shutil.copy(FAULTS / "sbatch", shim / "sbatch")
    shutil.copy(FAULTS / "ssh", local_ssh / "ssh")
    root.chmod(0o755)
    shim.chmod(0o777)  # the login node's user consumes MODE (no sticky bit: the test writes it)
    env = {"XDG_CONFIG_HOME": str(root / "config"), "XDG_STATE_HOME": str(root / "state"),
           "XDG_CACHE_HOME": str(root / "cache"),
           "XDG_RUNTIME_DIR": str(root / "run"), "PATH": f"{local_ssh}:{os.environ['PATH']}",
           "HPCFT_CLUSTER": ""}  # fmt: skip
    runs = f"/home/hpcft/test-runs-{uuid.uuid4().hex[:8]}"
    w = Workstation(root=root, env=env, runs=runs, shim=shim, local_ssh=local_ssh)
    w.hpcft("clusters", "add", "lab", "--host", LOGIN, "--runs-dir", runs, "--hpcft", REMOTE_HPCFT,
            "--ssh-option", f"IdentityFile={KEY}", "--ssh-option", "IdentitiesOnly=yes",
            "--ssh-option", f"UserKnownHostsFile={KNOWN}", "--ssh-option", "BatchMode=yes",
            "--env", f"PATH={shim}:/usr/local/bin:/usr/bin:/bin", "--env", f"SLURM_CONF={lab.conf}")  # fmt: skip
    try:
        yield w
    finally:
        (local_ssh / "DOWN").unlink(missing_ok=True)
        _login("rm", "-rf", "--", runs)
        w.hpcft("clusters", "remove", "lab", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _submitted(out: str) -> tuple[str, str]:
    m = re.search(r"(?:submitted (\S+) as job (\d+))|(?:(\S+) was submitted as job (\d+))", out)
    assert m, out
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))


def _status(w: Workstation, run: str) -> dict:
    return json.loads(w.hpcft("status", run, "--json", "--cluster", "lab").stdout)


def _jobs_named(run: str, script: str = "job.sbatch") -> list[str]:
    """The jobs sacct knows submitted with the run's batch script (their sbatch command line): how often it was."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-2hours", "-o", "JobID,SubmitLine%400"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line.split("|")[0] for line in out.splitlines() if f"/{run}/{script}" in line]


def test_clusters_lists_and_checks_the_login_node(ws):
    out = ws.hpcft("clusters").stdout
    assert "lab" in out and LOGIN in out and "shim/sbatch" in out, out  # sbatch on the login node's PATH
    assert re.search(r"\d+\.\d+\.\d+", out), out  # the hpcft version there


def test_a_job_that_exists_only_here_trains_there_and_is_followed_from_here(ws, demo_dir):
    project = ws.root / "project"  # the job file, model, tokenizer and data: only on this machine
    shutil.copytree(demo_dir, project)
    args = ("submit", "project/job.yaml", "--cluster", "lab", "--nodes", "2", "--gpus-per-node", "1",
            "-o", "train.max_steps=12", "-o", "train.save_steps=6", "-o", "train.eval_steps=6",
            "-o", "launch.env_passthrough=[HPCFT_TEST_TOKEN]")  # fmt: skip
    secret = {**ws.env, "HPCFT_TEST_TOKEN": f"hf_{uuid.uuid4().hex}"}  # from this shell, by name

    def with_secret(*argv: str) -> subprocess.CompletedProcess:
        return hpcft(*argv, env=secret, cwd=ws.root)

    first = with_secret(*args, "--wait")
    out = first.stdout + first.stderr
    sent = int(re.search(r"(\d+) copied \((\d+) bytes sent\)", out).group(2))
    model_bytes = sum(f.stat().st_size for f in (project / "model").rglob("*") if f.is_file())
    assert sent >= model_bytes, out  # the model went over the wire
    run, _ = _submitted(out)
    assert f"{run}: COMPLETED" in out, out
    st = _status(ws, run)
    assert st["state"] == "COMPLETED" and st["step"] == 12 and st["nodes"].startswith("2"), st
    here = ws.hpcft("status", "--runs-dir", str(ws.root / "no-runs-here")).stdout  # this side's record, no ssh
    assert f"on cluster lab, submitted from here: {run}" in here, here
    followed = ws.hpcft("logs", run, "-f", "--cluster", "lab").stdout  # -f returns once the run has ended
    assert "hpcft: done: the run is FINISHED" in followed and followed.count("hpcft: done:") == 1, followed

    png = ws.root / "curves.png"
    assert f"wrote {png}" in ws.hpcft("plot", run, "--cluster", "lab", "--out", str(png)).stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    unset = ws.hpcft("resume", run, "--cluster", "lab", "-o", "train.max_steps=18", check=False)
    assert unset.returncode == 1 and "HPCFT_TEST_TOKEN is not set in this shell" in unset.stderr, unset.stderr
    resumed = with_secret("resume", run, "--cluster", "lab", "-o", "train.max_steps=18", "--wait")
    assert "from checkpoint-12" in resumed.stdout and f"{run}: COMPLETED" in resumed.stdout, resumed.stdout
    assert _status(ws, run)["step"] == 18
    exported = f"{ws.runs}/exported"  # a directory on the cluster, written by its hpcft
    assert "exported checkpoint-18" in ws.hpcft("export", run, "--out", exported, "--cluster", "lab").stdout
    assert {"config.json", "model.safetensors"} <= set(_login("ls", exported).stdout.split())

    # The same inputs again: nothing is copied (the plan shows it, the submission sends no byte).
    unset = ws.hpcft("plan", *args[1:], check=False)  # as its submission would say
    assert unset.returncode == 1 and "HPCFT_TEST_TOKEN is not set in this shell" in unset.stderr, unset.stderr
    plan = with_secret("plan", *args[1:]).stdout
    assert "would copy" not in plan and "already there" in plan and "total to copy: 0 B" in plan, plan
    assert "#SBATCH" in plan  # the cluster's own plan, the secret's value on its stdin
    again = with_secret(*args, "--dry-run")
    assert "0 copied (0 bytes sent), 4 already there" in again.stderr, again.stderr
    assert "#SBATCH" in again.stdout  # the cluster's own plan of the staged job
    value = secret["HPCFT_TEST_TOKEN"].encode()  # passed to the submission and the resume: in no file there
    assert [p for p in Path(ws.runs).rglob("*") if p.is_file() and value in p.read_bytes()] == []


def test_a_users_script_and_data_from_here_get_the_rendezvous_there_and_cancel_works(ws):
    project = ws.root / "script"
    project.mkdir()
    (project / "lines.txt").write_text("a\nb\nc\n")
    (project / "count.py").write_text(
        "import hashlib, os, sys, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "n = torch.tensor([len(open(sys.argv[1]).read().split())])\n"
        "dist.all_reduce(n)\n"
        "print(f'rank {dist.get_rank()} of {dist.get_world_size()}: {int(n)} lines in all', flush=True)\n"
        "secret = hashlib.sha256(os.environ.get('HPCFT_TEST_TOKEN', '').encode()).hexdigest()\n"
        "print('the secret arrived' if secret == sys.argv[2] else 'no secret', flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    (project / "job.yaml").write_text("run: {name: count}\nresources: {nodes: 2, gpus_per_node: 1}\n"
                                      "launch: {env_passthrough: [HPCFT_TEST_TOKEN]}\n")  # fmt: skip
    secret = f"hf_{uuid.uuid4().hex}"  # travels from this shell by name (stdin of the remote submit)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    done = hpcft("submit", "job.yaml", "--cluster", "lab", "--wait", "--", "count.py", "lines.txt", digest,
                 env={**ws.env, "HPCFT_TEST_TOKEN": secret}, cwd=project)  # fmt: skip
    run, _ = _submitted(done.stdout)
    logs = ws.hpcft("logs", run, "--cluster", "lab").stdout
    assert "rank 0 of 2: 6 lines in all" in logs, logs  # both nodes read the copied file: 3 + 3
    assert logs.count("the secret arrived") == 2, logs
    written = [p for p in Path(ws.runs).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert written == []  # in no file of the run, its logs or the staged inputs
    unset = ws.hpcft("submit", "job.yaml", "--cluster", "lab", "--", "count.py", "x", "y", cwd=project, check=False)
    assert unset.returncode == 1 and "launch.env_passthrough: HPCFT_TEST_TOKEN is not set in this shell" in unset.stderr

    (project / "wait.yaml").write_text("run: {name: waits}\nresources: {nodes: 1}\nlaunch: {launcher: none}\n")
    started = ws.hpcft("submit", "wait.yaml", "--cluster", "lab", "--", "sleep", "600", cwd=project)
    run, job = _submitted(started.stdout)
    wait_until("the job to run", lambda: _status(ws, run)["state"] == "RUNNING", timeout=120, interval=1)
    assert f"cancelled job {job}" in ws.hpcft("cancel", run, "--cluster", "lab").stdout
    assert ws.hpcft("wait", run, "--cluster", "lab", check=False).returncode == 1
    assert _status(ws, run)["state"] == "CANCELLED"


TINY = "run: {name: once}\nresources: {nodes: 1}\nlaunch: {launcher: none}\n"


@pytest.mark.parametrize("point", ["before", "between", "after"])
def test_a_connection_killed_at_each_point_of_a_submit_leaves_one_job(ws, point):
    """before: the login node's session dies before sbatch runs; between: after sbatch answered, before hpcft
    read it; after: the cluster's answer was sent and the workstation's connection dies as it arrives. The same
    command goes on (its retry carries the same intent): one run, one job."""
    (ws.root / "once.yaml").write_text(TINY)
    if point == "after":
        (ws.local_ssh / "AFTER").write_text("once")
    else:
        (ws.shim / "MODE").write_text(point)
    proc = ws.hpcft("submit", "once.yaml", "--cluster", "lab", "--", "true")
    out = proc.stdout + proc.stderr
    assert "trying again (1/2), same submission" in out, out
    assert not (ws.shim / "MODE").exists() and not (ws.local_ssh / "AFTER").exists()  # the fault happened
    run, job = _submitted(out)
    assert "by an earlier try of this submission; nothing new was submitted" in out, out
    assert wait_until("sacct to know the job", lambda: _jobs_named(run), timeout=60) == [job]
    runs = _login("ls", "-1", ws.runs).stdout.split()
    assert run in runs
    assert len(json.loads(_login("cat", f"{ws.runs}/{run}/state.json").stdout)["jobs"]) == 1


def test_the_same_command_again_after_the_network_went_down_resumes_never_repeats(ws):
    (ws.root / "once.yaml").write_text(TINY)
    (ws.local_ssh / "AFTER").write_text("down")  # the answer is lost, and the network stays down
    lost = ws.hpcft("submit", "once.yaml", "--cluster", "lab", "--", "true", check=False)
    assert lost.returncode == 1
    assert "run the same command again: it resumes this submission" in lost.stderr, lost.stderr
    (ws.local_ssh / "DOWN").unlink()
    again = ws.hpcft("submit", "once.yaml", "--cluster", "lab", "--", "true")
    out = again.stdout + again.stderr
    assert "resuming an earlier submission of this job" in out, out
    run, job = _submitted(out)
    assert "by an earlier try of this submission" in out, out
    assert wait_until("sacct to know the job", lambda: _jobs_named(run), timeout=60) == [job]
    # Answered now: the same command a third time is a new run of its own (one job each).
    third = ws.hpcft("submit", "once.yaml", "--cluster", "lab", "--", "true")
    run3, job3 = _submitted(third.stdout)
    assert run3 != run and "earlier try" not in third.stdout + third.stderr
    assert wait_until("sacct to know the job", lambda: _jobs_named(run3), timeout=60) == [job3]


def test_a_sweep_from_here_is_submitted_once_when_its_connection_drops(ws):
    (ws.root / "once.yaml").write_text(TINY)
    (ws.shim / "MODE").write_text("between")  # the array submitted; the connection dies before hpcft reads it
    proc = ws.hpcft("sweep", "once.yaml", "--cluster", "lab", "-o", "train.lr=1e-4,2e-4", "--wait", "--", "true")
    out = proc.stdout + proc.stderr
    assert "trying again (1/2), same submission" in out and not (ws.shim / "MODE").exists(), out
    m = re.search(r"sweep (\S+) \(2 points\) as job array (\d+): was submitted by an earlier try", out)
    assert m, out
    sweep, array = m.groups()
    assert out.count(": COMPLETED") == 2, out  # --wait: both points, followed from here
    wait_until("sacct to know the array", lambda: _jobs_named(sweep, "sweep.sbatch"), timeout=60)
    assert {j.split("_")[0] for j in _jobs_named(sweep, "sweep.sbatch")} == {array}  # one array, submitted once
