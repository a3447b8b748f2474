"""The sbatch backend: the run directory holds job.sbatch; ``sbatch --parsable`` submits it."""

from __future__ import annotations

from pathlib import Path

from hpcft import runs
from hpcft.plan import Plan
from hpcft.slurm import client


def start(plan: Plan, run: Path) -> str:
    """Submit the already written ``job.sbatch``; return the job id."""
    job_id = client.submit(plan.submit_argv)
    runs.record_job(run, job_id)
    return job_id
