"""Priority preemption as SLURM really does it: SIGTERM to the step with a grace time, not a hand-sent signal.

On the lab a run on the preemptible partition ``low`` (GraceTime=90, PreemptMode=REQUEUE) is preempted
by a job on ``high`` that needs its GPUs. SLURM sends SIGTERM to the process it started on each node;
``hpcft node`` turns it into a checkpoint request, the ranks save at their next step and exit, the job
is requeued, and the run continues at the very step it reached — counted as a preemption, not a failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import hpcft, release_requeued, squeue_state, wait_until

pytestmark = pytest.mark.cluster

ONE_PER_NODE = ["--nodes", "2", "--gpus-per-node", "1"]  # the claims are about nodes and jobs, not ranks


def _steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # the last one may be half-written
    return [json.loads(x) for x in lines if x]


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


@pytest.mark.parametrize("backend", ["sbatch", "submitit"])
def test_priority_preemption_with_grace_time_loses_no_step(lab, demo_dir, runs_dir, backend):
    # submitit: SLURM's SIGTERM reaches submitit's task (which ignores it), not hpcft node: NodeTask takes it.
    preempt_and_resume(demo_dir, runs_dir, "--backend", backend)


HEARD = "SIGTERM (preemption, time limit or cancel): asking the ranks to checkpoint"  # hpcft node's line


def preempt_and_resume(demo_dir: Path, runs_dir: Path, *args: str, heard: str = HEARD) -> None:
    """Submit the demo on ``low`` with ``args``, preempt it from ``high`` at step 20 or later: the ranks save
    within the grace time, the job is requeued, and the run resumes at the step it reached and completes;
    ``heard``: the line of the job's output that says who took SLURM's SIGTERM."""
    out = hpcft("submit", str(demo_dir / "job.yaml"), *ONE_PER_NODE, "--partition", "low", "--runs-dir",
                str(runs_dir), "-o", "train.max_steps=100", "-o", "train.save_steps=100000",
                "-o", "train.eval_steps=null", *args).stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    wait_until("step 20", lambda: any(r.get("step", 0) >= 20 and "loss" in r for r in _steps(run)), timeout=300)
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--gres=gpu:2", "--mem=1G",
                                "-o", "/dev/null", "--wrap", "sleep 2"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    try:
        event = wait_until(
            "the preemption in state.json",
            lambda: next((e for e in _state(run).get("events", []) if e.get("kind") == "preemption"), None),
            timeout=120,
        )
        assert event["action"] == "requeue" and event["reason"] == "checkpointed after SLURM's SIGTERM (preemption)"
        saved = max(r["step"] for r in _steps(run) if "loss" in r)
        assert (run / "checkpoints" / f"checkpoint-{saved}").is_dir()  # the save happened inside the grace time
        release_requeued(job)  # SLURM holds a requeued job 120 s (BeginTime); lifted once the old run is torn down
        wait_until("COMPLETED", lambda: json.loads(hpcft("status", str(run), "--json").stdout)["state"] == "COMPLETED",
                   timeout=600, interval=2)  # fmt: skip
    finally:
        subprocess.run(["scancel", preemptor], check=False)  # ended by now; never leave it holding the lab
        hpcft("cancel", str(run), check=False)  # a run that went wrong must not hold the lab either
    begins = [r for r in _steps(run) if r.get("event") == "train_begin" or "start_step" in r]
    assert [b["start_step"] for b in begins] == [0, saved]  # resumed at the step it reached: 0 steps lost
    state = _state(run)
    assert state.get("failures", 0) == 0 and state["preemptions"] == 1
    output = hpcft("logs", str(run)).stdout
    assert heard in output


def test_submitit_time_limit_warning_checkpoints_and_requeues(lab, demo_dir, runs_dir):
    """submitit's own warning (USR2 before --time) reaches NodeTask.checkpoint: save, requeue, resume."""
    out = hpcft("submit", str(demo_dir / "job.yaml"), *ONE_PER_NODE, "--time", "2", "--backend", "submitit",
                "--runs-dir", str(runs_dir), "-o", "train.max_steps=100000", "-o", "train.save_steps=100000",
                "-o", "train.eval_steps=null", "-o", "run.max_preemptions=1").stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    assert "slurm_signal_delay_s: 60" in (run / "submitit.yaml").read_text()
    event = wait_until("the time-limit event", lambda: next(
        (e for e in _state(run).get("events", []) if e.get("kind") == "time limit"), None), timeout=180)  # fmt: skip
    assert event["action"] == "requeue" and event["rc"] == 0  # the ranks saved and ended; 124: a timeout
    saved = max(r["step"] for r in _steps(run) if "loss" in r)
    assert (run / "checkpoints" / f"checkpoint-{saved}").is_dir()  # saved at the warning, not at the limit
    release_requeued(job)
    wait_until("the resumed run", lambda: sum(1 for r in _steps(run) if r.get("event") == "train_begin") == 2,
               timeout=180)  # fmt: skip
    begins = [r for r in _steps(run) if r.get("event") == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, saved] and [b["restart"] for b in begins] == [0, 1]
    # run.max_preemptions=1 is spent at the second warning: that run ends "done", nothing requeues it again.
    wait_until("the second warning's decision", lambda: len(_state(run).get("events", [])) >= 2, timeout=180)
    second = _state(run)["events"][1]
    assert second["action"] == "done" and "max_preemptions 1/1 spent" in second["reason"] and second["rc"] == 0
    wait_until("the job to end", lambda: squeue_state(job) == "", timeout=120)
    assert _state(run).get("failures", 0) == 0


def test_sbatch_time_limit_warning_fired_by_slurm_checkpoints_and_requeues(lab, demo_dir, runs_dir):
    """The batch script's own ``#SBATCH --signal=B:USR1@60`` under a real 2-minute limit: SLURM fires it (up
    to a minute early), the ranks save, after-job requeues, and the run resumes at the saved step."""
    endless = ["-o", "train.max_steps=100000", "-o", "train.save_steps=100000", "-o", "train.eval_steps=null"]
    out = hpcft("submit", str(demo_dir / "job.yaml"), *ONE_PER_NODE, "--time", "2", "--runs-dir", str(runs_dir),
                *endless).stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    assert "#SBATCH --signal=B:USR1@60\n" in (run / "job.sbatch").read_text()
    try:
        event = wait_until(
            "the time-limit event",
            lambda: next((e for e in _state(run).get("events", []) if e.get("kind") == "time limit"), None),
            timeout=180,
        )
        assert (event["action"], event["rc"], event["job"]) == ("requeue", 0, job), event
        assert event["reason"] == "checkpointed after the warning signal"
        saved = max(r["step"] for r in _steps(run) if "loss" in r)
        assert (run / "checkpoints" / f"checkpoint-{saved}" / "COMPLETE").is_file()
        assert "hpcft: warning signal: asking the ranks to checkpoint" in hpcft("logs", str(run)).stdout
        release_requeued(job)
        wait_until("the resumed run", lambda: sum(1 for r in _steps(run) if r.get("event") == "train_begin") == 2,
                   timeout=180)  # fmt: skip
    finally:
        hpcft("cancel", str(run), check=False)  # the second segment would only run to its own warning
    begins = [r for r in _steps(run) if r.get("event") == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, saved] and [b["restart"] for b in begins] == [0, 1]
    assert _state(run).get("failures", 0) == 0 and _state(run)["preemptions"] == 1
