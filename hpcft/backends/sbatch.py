"""The sbatch backend: write the run directory (with job.sbatch), run ``sbatch --parsable``."""

from __future__ import annotations

import shutil
from pathlib import Path

from hpcft import runs
from hpcft.errors import SubmissionError
from hpcft.plan import Plan
from hpcft.slurm import client


def submit(plan: Plan) -> tuple[Path, str]:
    """Submit the plan; if sbatch refuses it, the run directory is removed (nothing half-done)."""
    run = runs.write_run_dir(plan)
    try:
        job_id = client.submit(plan.submit_argv)
    except SubmissionError:
        shutil.rmtree(run, ignore_errors=True)
        raise
    runs.record_job(run, job_id)
    return run, job_id
