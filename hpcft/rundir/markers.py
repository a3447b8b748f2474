"""Markers a job segment leaves for itself, stamped with that segment: harmless to any other segment.

A segment is one run of a SLURM job: its id and SLURM's restart count (``job.restart``); a requeue starts the
next one. ``RUN/REQUEUE`` says "the ranks of *this* segment saved step N for the requeue": rank 0 writes it,
the ranks read it (a rank torchrun restarts after that save must not train on) and after-job reads it
(requeue: a preemption, not a failure) and removes it. When a segment dies half-way — after-job never ran,
SLURM requeued the job itself — its marker stays; stamped with the old segment it means nothing to the next
one, which would otherwise exit at once and be charged a failure and a preemption. Nothing needs to notice
and clean it up. A marker from before the stamp (a step alone) counts, as it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hpcft.rundir import store
from hpcft.rundir.layout import REQUEUE_FILE
from hpcft.slurm.env import slurm_job_id


def segment(env: Mapping[str, str]) -> str:
    """``JOB.RESTART`` of the segment this process belongs to: the ranks' ``HPCFT_JOB_ID`` and
    ``HPCFT_RESTART_COUNT`` (ranks started over ssh see no SLURM variables), else SLURM's own."""
    job = env.get("HPCFT_JOB_ID") or slurm_job_id(env) or "local"
    restart = env.get("HPCFT_RESTART_COUNT") or env.get("SLURM_RESTART_COUNT") or "0"
    return f"{job}.{int(restart)}"


def mark_saved_for_requeue(run: Path, step: int, env: Mapping[str, str]) -> None:
    """This segment's ranks saved ``step`` and stop for the requeue."""
    store.write_atomic(run / REQUEUE_FILE, f"{step} {segment(env)}\n")


def saved_for_requeue(run: Path, env: Mapping[str, str]) -> int | None:
    """The step this segment saved for the requeue, or None (no marker, or another segment's)."""
    text = store.read_text(run / REQUEUE_FILE)
    fields = text.split() if text else []
    if not fields or not fields[0].isdigit():
        return None
    return int(fields[0]) if len(fields) == 1 or fields[1] == segment(env) else None


def clear_saved_for_requeue(run: Path) -> None:
    """The requeue is under way (after-job): the marker has served."""
    (run / REQUEUE_FILE).unlink(missing_ok=True)
