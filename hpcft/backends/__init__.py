"""Backends: how a planned run reaches the machines (sbatch, local).

``submit(plan) -> job id`` writes the run directory and starts the job; ``cancel(run, job)`` stops it.
"""

from __future__ import annotations

from pathlib import Path

from hpcft.plan import Plan

SLURM_BACKENDS = ("sbatch", "submitit")


def submit(plan: Plan) -> tuple[Path, str]:
    """Write the run directory and start the job with the plan's backend; return (run dir, job id)."""
    if plan.backend == "sbatch":
        from hpcft.backends import sbatch as backend
    elif plan.backend == "submitit":
        from hpcft.backends import submitit as backend  # type: ignore[no-redef]
    else:
        from hpcft.backends import local as backend  # type: ignore[no-redef]
    return backend.submit(plan)


def cancel(run: Path) -> str:
    """Cancel the newest job of a run and mark the run cancelled; return the job id."""
    from hpcft import runs
    from hpcft.errors import RunError

    state = runs.read_state(run)
    if not state["jobs"]:
        raise RunError(f"{run.name} has no job to cancel")
    job = state["jobs"][-1]
    runs.update_state(run, lambda s: s.update(cancelled=True))
    if state["backend"] in SLURM_BACKENDS:
        from hpcft.slurm import client

        client.cancel(job["id"])
    else:
        from hpcft.backends import local

        local.cancel(job)
    return job["id"]
