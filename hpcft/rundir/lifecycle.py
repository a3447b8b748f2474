"""The run's lifecycle: the one module that writes, reads and clears the run directory's markers.

A run goes created → queued → running segment k → (saving for requeue → requeued / chained → running
segment k+1)… → finished / failed / cancelled; ``hpcft resume`` takes a failed or finished run back to
queued. The transitions, who performs each and what it leaves in the run directory, are the table in
docs/architecture.md ("The run's lifecycle"). Every marker is written, read and removed here and nowhere
else (tests/unit/test_lifecycle.py checks the source), so its lifetime is decided in one place.

A *segment* is one run of a SLURM job: its id and SLURM's restart count (``JOB.RESTART``); a requeue starts
the next one. The two markers of a segment's ending carry that stamp:

- ``PREEMPT`` "CAUSE SEGMENT": checkpoint at your next step and stop (the USR1 trap, ``hpcft node`` on
  SLURM's SIGTERM, hpcft's warning timer, submitit's USR2);
- ``REQUEUE`` "STEP SEGMENT": this segment's ranks saved STEP for the requeue (rank 0 writes it; the ranks
  read it — a rank torchrun restarts after that save must not train on — and after-job reads it).

A segment that dies half-way (after-job never ran; SLURM requeued the job itself) leaves its markers; stamped
with the old segment they mean nothing to the next one. Nothing has to notice and clean them up: stale
markers are harmless by construction. A marker without a stamp (written by an older hpcft) counts as the
current segment's, as it did. The run's end states are not per segment: ``FINISHED`` (the last step, rank 0
after the final save), ``FATAL`` (what a rerun would repeat: a node's preflight, a configuration error) and the
pin ``RESUME_FROM`` (``hpcft resume --checkpoint N``, spent at the first newer commit).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hpcft.rundir import store
from hpcft.rundir.layout import FATAL_FILE, FINISHED_FILE, PREEMPT_FILE, REQUEUE_FILE, RESUME_FROM_FILE
from hpcft.slurm.env import slurm_job_id

# What ``hpcft resume`` clears: the end of the previous job (the pin is set anew or dropped).
STOP_MARKERS = (FINISHED_FILE, REQUEUE_FILE, PREEMPT_FILE, FATAL_FILE)
MARKER_FILES = (*STOP_MARKERS, RESUME_FROM_FILE)  # every marker: what a failed ``hpcft resume`` puts back

# The causes of a checkpoint request (PREEMPT's first word).
SIGTERM = "SIGTERM"  # SLURM's preemption SIGTERM, through hpcft node or submitit's task
USR1 = "USR1"  # the batch script's trap of SLURM's --signal
USR2 = "USR2"  # submitit's time-limit warning
TIMER = "TIMER"  # hpcft's warning timer (node/warn_timer.py), re-armed from the measured saves


def segment(env: Mapping[str, str]) -> str:
    """``JOB.RESTART`` of the segment this process belongs to: the ranks' ``HPCFT_JOB_ID`` and
    ``HPCFT_RESTART_COUNT`` (ranks started over ssh see no SLURM variables), else SLURM's own
    (the batch script's trap computes the same in bash: sbatch_templates/_launch_begin.j2)."""
    job = env.get("HPCFT_JOB_ID") or slurm_job_id(env) or "local"
    restart = env.get("HPCFT_RESTART_COUNT") or env.get("SLURM_RESTART_COUNT") or "0"
    return f"{job}.{int(restart)}"


def _this_segments(run: Path, name: str, env: Mapping[str, str]) -> list[str] | None:
    """The fields of marker ``name`` when it is this segment's (or unstamped), else None."""
    text = store.read_text(run / name, errors="replace")
    fields = text.split() if text else []
    if not fields:
        return [] if text is not None else None
    return fields if len(fields) == 1 or fields[1] == segment(env) else None


# running segment k → saving for requeue
def ask_to_checkpoint(run: Path, cause: str, env: Mapping[str, str], detail: str = "") -> None:
    """Ask this segment's ranks to checkpoint at their next step and stop (``cause``: SIGTERM, USR2, TIMER)."""
    store.write_atomic(run / PREEMPT_FILE, f"{cause} {segment(env)}{' ' + detail if detail else ''}\n")


def checkpoint_asked(run: Path, env: Mapping[str, str]) -> str | None:
    """Why this segment's ranks were asked to checkpoint (the cause; "" from a bare ``touch``), or None."""
    fields = _this_segments(run, PREEMPT_FILE, env)
    if fields is None:
        return None
    return fields[0] if fields else ""


def mark_saved_for_requeue(run: Path, step: int, env: Mapping[str, str]) -> None:
    """This segment's ranks saved ``step`` and stop for the requeue."""
    store.write_atomic(run / REQUEUE_FILE, f"{step} {segment(env)}\n")


def saved_for_requeue(run: Path, env: Mapping[str, str]) -> int | None:
    """The step this segment saved for the requeue, or None (no marker, or another segment's)."""
    fields = _this_segments(run, REQUEUE_FILE, env)
    return int(fields[0]) if fields and fields[0].isdigit() else None


# saving for requeue → requeued / chained
def requeued(run: Path) -> None:
    """The requeue is under way (after-job): this segment's markers have served."""
    for name in (REQUEUE_FILE, PREEMPT_FILE):
        (run / name).unlink(missing_ok=True)


# running → finished
def mark_finished(run: Path, step: int | None) -> None:
    """The run reached its last step (rank 0, after the final model is published)."""
    store.write_atomic(run / FINISHED_FILE, f"{'' if step is None else step}\n")


def finished_step(run: Path) -> str | None:
    """The step the run finished at ("" when unknown), or None when it has not finished."""
    text = store.read_text(run / FINISHED_FILE, errors="replace")
    return None if text is None else text.strip()


# running → failed, for good
def mark_fatal(run: Path, reason: str) -> None:
    """A problem a rerun would repeat: neither restarted in the job nor requeued."""
    store.write_atomic(run / FATAL_FILE, f"{reason}\n")


def fatal_reason(run: Path) -> str | None:
    """Why the run cannot go on ("" when the file says nothing), or None."""
    text = store.read_text(run / FATAL_FILE, errors="replace")
    return None if text is None else text.strip()


def fatal_recorded(run: Path) -> None:
    """after-job has recorded the segment's end (state.json's event says why): the marker has served."""
    (run / FATAL_FILE).unlink(missing_ok=True)


# failed / finished → queued (hpcft resume), and the pin it may set
def reopen(run: Path, pin: str | None) -> None:
    """Clear the previous job's end (``STOP_MARKERS``) and pin checkpoint ``pin`` (a directory name) or none."""
    for name in STOP_MARKERS:
        (run / name).unlink(missing_ok=True)
    if pin:
        store.write_atomic(run / RESUME_FROM_FILE, f"{pin}\n")
    else:
        (run / RESUME_FROM_FILE).unlink(missing_ok=True)


def pinned_resume(run: Path) -> str | None:
    """The checkpoint ``hpcft resume --checkpoint N`` pinned, or None."""
    text = store.read_text(run / RESUME_FROM_FILE, errors="replace")
    return (text or "").strip() or None


def pin_spent(run: Path) -> None:
    """A checkpoint newer than the pin was committed: the pin has served."""
    (run / RESUME_FROM_FILE).unlink(missing_ok=True)
