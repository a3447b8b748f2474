"""Cluster tier: `run.restart: chain` for sites without requeue, on the lab: the job is `--no-requeue`; a real
priority preemption (SIGTERM, grace time) ends it; the run continues in a new dependent job from its
checkpoint, and status shows the chain as one run. Expectations from sacct and the run's own files."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.test_preemption import _state, _steps
from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster


def test_preempted_chain_job_continues_in_a_dependent_job(lab, demo_dir, runs_dir):
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--partition", "low", "--runs-dir",
                str(runs_dir), "-o", "run.restart=chain", "-o", "train.max_steps=100", "-o", "train.save_steps=100000",
                "-o", "train.eval_steps=null").stdout  # fmt: skip
    first = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    script = (run / "job.sbatch").read_text()
    assert "#SBATCH --no-requeue" in script and f"#SBATCH --job-name={run.name}" in script
    wait_until("step 20", lambda: any(r.get("step", 0) >= 20 and "loss" in r for r in _steps(run)), timeout=300)
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--gres=gpu:2", "--mem=1G",
                                "-o", "/dev/null", "--wrap", "sleep 2"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    try:
        event = wait_until("the chained job", lambda: next((e for e in _state(run).get("events", [])
                                                            if e.get("next_job")), None), timeout=180)  # fmt: skip
        saved = max(r["step"] for r in _steps(run) if "loss" in r)
        wait_until("COMPLETED", lambda: json.loads(hpcft("status", str(run), "--json").stdout)["state"]
                   == "COMPLETED", timeout=600, interval=2)  # fmt: skip
    finally:
        subprocess.run(["scancel", preemptor], check=False)
    second = event["next_job"]
    assert event["kind"] == "preemption" and event["job"] == first and second != first
    records = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", first, "-o", "JobID,State"],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    # One record: never requeued (sacct -D lists every requeued run of a job). It ended by itself within the
    # grace time once after-job had chained the next job, so SLURM records the batch script's exit.
    assert len(records) == 1 and records[0].split("|")[1] in ("COMPLETED", "PREEMPTED", "CANCELLED"), records
    begins = [r for r in _steps(run) if r.get("event") == "train_begin"]
    assert [(b["job_id"], b["start_step"]) for b in begins] == [(first, 0), (second, saved)]  # no step lost
    st = json.loads(hpcft("status", str(run), "--json").stdout)
    assert st["job_ids"] == [first, second] and st["restarts"] == 1 and st["step"] == 100
    assert _state(run)["preemptions"] == 1 and not _state(run).get("failures")
