"""After the launcher ends inside a batch job: finished, requeue, or fail.

``decide`` is pure; ``after_job`` (run by the batch script as ``hpcft after-job RUN RC``) applies
it: records the outcome in state.json and, to requeue, calls ``scontrol requeue`` last (it ends the
batch script itself). A run marked FINISHED, or cancelled, is never requeued; a crash is requeued
only while the failure budget (``run.max_failures``) lasts; a checkpoint taken after the warning
signal (``RUN/REQUEUE``) is always requeued.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from hpcft.train_files import FATAL_FILE, FINISHED_FILE, REQUEUE_FILE

DEFAULT_LEAD = 180  # seconds, until a save has been measured


@dataclass(frozen=True)
class Decision:
    """What to do with a batch job whose launcher has ended."""

    action: str  # "done" | "requeue" | "fail"
    reason: str
    exit_code: int


def decide(rc: int, *, finished: bool, saved_for_requeue: bool, cancelled: bool, requeue_allowed: bool,
           failures: int, max_failures: int, fatal: str | None = None) -> Decision:  # fmt: skip
    """The outcome for launcher exit code ``rc`` and the run's markers; pure.

    ``fatal`` says why a rerun would fail the same way (a node's preflight: no run dir, loopback master,
    launcher missing; or a configuration error the trainer raised): such a job is never requeued.
    """
    if finished:
        return Decision("done", "the run is FINISHED", 0)
    if cancelled:
        return Decision("done", "the run was cancelled", rc or 0)
    if fatal:
        return Decision("fail", f"{fatal} (not requeued: a rerun would fail the same way)", rc or 3)
    if saved_for_requeue:
        if requeue_allowed:
            return Decision("requeue", "checkpointed after the warning signal", 0)
        return Decision("done", "checkpointed after the warning signal; run.requeue is off (hpcft resume RUN)", 0)
    if rc != 0:
        if requeue_allowed and failures < max_failures:
            return Decision("requeue", f"launcher failed with {rc}; requeue {failures + 1} of {max_failures}", rc)
        return Decision("fail", f"launcher failed with {rc}; failure budget {failures}/{max_failures} spent", rc)
    return Decision("done", "the launcher ended without error", 0)


def signal_lead(save_seconds: float | None) -> int:
    """Seconds of warning before the time limit: room for three saves and a step, at least a minute."""
    if not save_seconds:
        return DEFAULT_LEAD
    return max(60, math.ceil(3 * save_seconds + 30))


def after_job(run: Path, rc: int) -> int:
    """Apply ``decide`` for this job; returns the batch script's exit code (unless requeued)."""
    from hpcft import runs  # runs → plan → this module: import at use
    from hpcft.slurm import client

    spec = runs.load_run_spec(run)
    state = runs.read_state(run)
    fatal = run / FATAL_FILE
    job_id = os.environ.get("SLURM_JOB_ID", "")
    d = decide(
        rc,
        finished=(run / FINISHED_FILE).exists(),
        saved_for_requeue=(run / REQUEUE_FILE).exists(),
        cancelled=bool(state.get("cancelled")),
        requeue_allowed=spec.run.requeue and bool(job_id),
        failures=int(state.get("failures", 0)),
        max_failures=spec.run.max_failures,
        fatal=fatal.read_text().strip() if fatal.exists() else None,
    )

    def record(s: dict) -> None:
        s.setdefault("events", []).append({"job": job_id, "rc": rc, "action": d.action, "reason": d.reason,
                                           "time": runs.now_iso()})  # fmt: skip
        if d.action == "requeue":
            s["restarts"] = int(s.get("restarts", 0)) + 1
            if rc != 0:
                s["failures"] = int(s.get("failures", 0)) + 1

    runs.update_state(run, record)
    fatal.unlink(missing_ok=True)
    print(f"hpcft: {d.action}: {d.reason}", flush=True)
    if d.action == "requeue":
        (run / REQUEUE_FILE).unlink(missing_ok=True)
        client.requeue(job_id)  # ends this script; the job restarts with SLURM_RESTART_COUNT+1
    return d.exit_code
