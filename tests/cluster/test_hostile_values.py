"""A hostile value and a secret through every launcher's real shell, on the 2-node lab.

The value (spaces, both quotes, ``$(…)``, backticks, ``;``, ``|``, ``&``, a backslash, ``$VAR``) goes in
as a job environment value (``launch.env``) and as an argument of the user's command; the secret (all
of that plus a newline, as a PEM key or a multi-line token has) goes in through ``launch.env_passthrough``
from the submitting shell. Every rank of every launcher must receive both unchanged, no command inside
them may run (the canary files stay absent), and the secret's value must appear in no file of the run
directory — spec, script, hostfile, ``.deepspeed_env``, logs — nor in the output of hpcft.
The independent expectation is the value itself: each rank reports what it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import SSH_SETUP, hpcft

pytestmark = pytest.mark.cluster


PROBE = """
import hashlib, json, os, sys
rank = next(os.environ[k] for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID") if k in os.environ)
secret = os.environ.get("HPCFT_TEST_TOKEN")
out, *args = [a for a in sys.argv[1:] if not a.startswith("--local_rank=")]  # the deepspeed launcher adds it
record = {"argv": args, "value": os.environ.get("HOSTILE_VALUE"),
          "secret_sha256": hashlib.sha256(secret.encode()).hexdigest() if secret is not None else None}
with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
    json.dump(record, f)
"""

LAUNCHERS = {
    "torchrun": [],
    "deepspeed": ["--launcher", "deepspeed"],
    "deepspeed-pdsh": ["--launcher", "deepspeed-pdsh", "-o", SSH_SETUP],
    "deepspeed-openmpi": ["--launcher", "deepspeed-openmpi", "-o", SSH_SETUP],
    "accelerate": ["--launcher", "accelerate"],
    "srun": ["--launcher", "srun"],
    "none": ["--launcher", "none"],
}


def hostile(canary: Path) -> str:
    return f"a  b 'sq' \"dq\" $(touch {canary}1) `touch {canary}2` ; touch {canary}3 | & \\ $HOME %j #c"


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_hostile_value_and_a_secret_reach_every_rank_unchanged(lab, demo_dir, runs_dir, tmp_path, launcher):
    canary = tmp_path / "ran-"
    value = hostile(canary)
    secret = f"hf_{secrets.token_hex(16)}\nline two {value}"
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    out = tmp_path / "out"
    out.mkdir()
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"launch": {"env": {"HOSTILE_VALUE": value}, "env_passthrough": ["HPCFT_TEST_TOKEN"]}}))
    proc = hpcft("submit", str(job), "--nodes", "2", "--gpus-per-node", "2", "--wait", "--runs-dir", str(runs_dir),
                 "--backend", "sbatch", "-o", "run.max_failures=0", *LAUNCHERS[launcher],
                 "--", str(probe), str(out), value, "x y", "",
                 env={"HPCFT_TEST_TOKEN": secret}, check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(run.rglob("*.out")))
    assert proc.returncode == 0, (proc.stdout, proc.stderr, logs)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert len(records) == (2 if launcher == "none" else 4), (records, logs)  # none: the command once per node
    want = hashlib.sha256(secret.encode()).hexdigest()
    for r in records:
        assert r["argv"] == [value, "x y", ""], r
        assert r["value"] == value, r
        assert r["secret_sha256"] == want, "the secret did not arrive unchanged"
    assert not list(tmp_path.glob("ran-*")), "a command inside the value ran"
    leaked = [str(p) for p in run.rglob("*") if p.is_file() and secret.split("\n")[0].encode() in p.read_bytes()]
    assert not leaked and secret.split("\n")[0] not in proc.stdout + proc.stderr, f"the secret was written: {leaked}"


def test_a_secret_the_ssh_daemon_does_not_accept_stops_pdsh_before_training(lab, demo_dir, runs_dir, tmp_path):
    """deepspeed-pdsh passes env_passthrough over ssh (SendEnv): a name the nodes' sshd refuses is named at once."""
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"launch": {"env_passthrough": ["NOT_ACCEPTED_TOKEN"]}}))
    proc = hpcft("submit", str(job), "--nodes", "2", "--wait", "--runs-dir", str(runs_dir), "--backend", "sbatch",
                 "-o", "run.max_failures=0", *LAUNCHERS["deepspeed-pdsh"], "--", "true",
                 env={"NOT_ACCEPTED_TOKEN": "x"}, check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    output = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("slurm-*.out"))
    assert proc.returncode != 0
    assert "NOT_ACCEPTED_TOKEN" in output and "AcceptEnv" in output, output


def test_a_passthrough_variable_missing_from_the_shell_is_refused_at_submit(tmp_path, runs_dir):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"launch": {"env_passthrough": ["HPCFT_TEST_UNSET_TOKEN"]}}))
    assert "HPCFT_TEST_UNSET_TOKEN" not in os.environ
    proc = hpcft("submit", str(job), "--runs-dir", str(runs_dir), "--backend", "sbatch", "--", "true", check=False)
    assert proc.returncode == 1 and "HPCFT_TEST_UNSET_TOKEN is not set" in proc.stderr, proc.stderr
    assert not list(runs_dir.glob("*"))


def test_job_sbatch_submitted_by_hand_without_the_secret_stops_and_says_so(lab, tmp_path, runs_dir):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"launch": {"env_passthrough": ["HPCFT_TEST_TOKEN"]}}))
    hpcft("submit", str(job), "--runs-dir", str(runs_dir), "--backend", "sbatch", "--no-submit", "--", "true",
          env={"HPCFT_TEST_TOKEN": "x"})  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "HPCFT_TEST_TOKEN"}
    job_id = subprocess.run(["sbatch", "--parsable", "--wait", str(run / "job.sbatch")], env=env, capture_output=True,
                            text=True, timeout=120).stdout.strip().split(";")[0]  # fmt: skip
    output = (run / "logs" / f"slurm-{job_id}.out").read_text(errors="replace")
    assert "launch.env_passthrough names HPCFT_TEST_TOKEN, which this job's environment does not have" in output
