"""``hpcft after-job RUN RC``: run by the batch script when the launcher ends; applies the requeue policy.

Reads the run's markers, asks ``plan.requeue.decide``, records the outcome in state.json and, to
requeue, calls ``scontrol requeue`` last (it ends the batch script itself).
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcft.plan.requeue import decide
from hpcft.rundir import store
from hpcft.rundir.layout import FATAL_FILE, FINISHED_FILE, REQUEUE_FILE
from hpcft.slurm import client


def after_job(run: Path, rc: int) -> int:
    """Apply ``decide`` for this job; returns the batch script's exit code (unless requeued)."""
    spec = store.load_run_spec(run)
    state = store.read_state(run)
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
                                           "time": store.now_iso()})  # fmt: skip
        if d.action == "requeue":
            s["restarts"] = int(s.get("restarts", 0)) + 1
            if rc != 0:
                s["failures"] = int(s.get("failures", 0)) + 1

    store.update_state(run, record)
    fatal.unlink(missing_ok=True)
    print(f"hpcft: {d.action}: {d.reason}", flush=True)
    if d.action == "requeue":
        (run / REQUEUE_FILE).unlink(missing_ok=True)
        client.requeue(job_id)  # ends this script; the job restarts with SLURM_RESTART_COUNT+1
    return d.exit_code
