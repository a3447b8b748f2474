"""Backends: how a planned run reaches the machines (sbatch, local).

Each backend module has ``start(plan, run) -> job id``; ``submit`` writes a new run directory first,
``resubmit`` reuses one (``hpcft resume``), ``cancel`` stops a run's newest job.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hpcft.plan import Plan

SLURM_BACKENDS = ("sbatch", "submitit")


def _backend(name: str):
    if name == "sbatch":
        from hpcft.backends import sbatch as backend
    elif name == "submitit":
        from hpcft.backends import submitit as backend  # type: ignore[no-redef]
    else:
        from hpcft.backends import local as backend  # type: ignore[no-redef]
    return backend


def submit(plan: Plan) -> tuple[Path, str]:
    """Write a new run directory and start the job; if starting fails, the directory is removed."""
    from hpcft import runs

    run = runs.write_run_dir(plan)
    try:
        return run, _backend(plan.backend).start(plan, run)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise


def resubmit(plan: Plan) -> str:
    """Rewrite an existing run's files (spec, script) and start a new job in it; restore them on failure."""
    from hpcft import runs

    run = Path(plan.run_dir)
    old = {name: (run / name).read_text() for name in plan.files if (run / name).is_file()}
    for name, text in plan.files.items():
        runs.write_atomic(run / name, text)
    try:
        return _backend(plan.backend).start(plan, run)
    except BaseException:
        for name, text in old.items():
            runs.write_atomic(run / name, text)
        raise


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
