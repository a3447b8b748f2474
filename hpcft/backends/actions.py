"""What every backend shares: submit into a new run directory, resubmit or resume into an existing one, cancel.

Each backend's ``start`` hands a written run directory to the machines; these functions do the
writing around it and undo it when starting fails.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.backends import base
from hpcft.errors import MaybeSubmittedError, RunError
from hpcft.rundir import lifecycle, store
from hpcft.rundir.layout import STATE_FILE

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan
    from hpcft.plan.resume import ResumePlan


def submit(plan: Plan) -> tuple[Path, str]:
    """Write a new run directory and start the job; if starting fails, the directory is removed."""
    run = store.write_run_dir(plan)
    return run, start_in(plan, run)


def start_in(plan: Plan, run: Path) -> str:
    """Start the job of the just written ``run``; if starting fails, the directory is removed."""
    try:
        return base.get(plan.backend).load().start(plan, run)
    except MaybeSubmittedError as e:
        # A job may be running from this directory: removing it would pull the files from under it.
        raise RunError(f"{e.message}\nThe run directory {run} is kept for it.", hint=e.hint) from None
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise


def write_only(plan: Plan) -> Path:
    """Write the run directory of an sbatch plan without submitting (``submit --no-submit``)."""
    if plan.backend != "sbatch":
        raise RunError(
            f"--no-submit writes a batch script for you to sbatch; this job's backend is {plan.backend}",
            hint="add --backend sbatch",
        )
    return store.write_run_dir(plan)


def resubmit(plan: Plan) -> str:
    """Rewrite an existing run's files (spec, script) and start a new job in it; restore them on failure."""
    run = Path(plan.run_dir)
    with as_it_was(run, plan.files):
        for name, text in plan.files.items():
            store.write_atomic(run / name, text)
        return base.get(plan.backend).load().start(plan, run)


@contextlib.contextmanager
def as_it_was(run: Path, names: Iterable[str]) -> Iterator[None]:
    """Put the files ``names`` of ``run`` back as they were (bytes, or absent) if the block fails.

    A resume or resubmit that cannot start its job must leave the run as it found it: its markers,
    failure count, pinned checkpoint and script. A file that cannot be written is a ``RunError``.
    """
    names = list(names)
    kept = {name: (run / name).read_bytes() for name in names if (run / name).is_file()}
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            for name in names:
                if name not in kept and (run / name).is_file():
                    (run / name).unlink()
            for name, data in kept.items():
                store.write_atomic(run / name, data)
        if isinstance(e, OSError):
            raise RunError(f"cannot write {e.filename or run}: {e.strerror}", hint=store.DAMAGED_HINT) from None
        raise


def refuse_if_live(run: Path) -> None:
    """Refuse a second job on a run whose newest job still runs: they would delete each other's staging
    directory and interleave their checkpoints (``hpcft resume`` asks this before planning)."""
    if live := live_job(run):
        raise RunError(
            f"job {live} of {run.name} is still queued or running: a second job on the same run would overwrite "
            "its checkpoints",
            hint=f"wait for it to end, or `hpcft cancel {run.name}` first",
        )


def resume(rp: ResumePlan) -> str:
    """Clear the previous job's markers, pin the checkpoint if one was named, and submit; the job id."""
    run = Path(rp.plan.run_dir)
    with as_it_was(run, (*lifecycle.MARKER_FILES, STATE_FILE)):
        lifecycle.reopen(run, rp.checkpoint.path.name if rp.explicit and rp.checkpoint else None)
        store.update_state(run, fresh_budgets)
        return resubmit(rp.plan)


def fresh_budgets(state: dict) -> None:
    """What a person's ``hpcft resume`` starts anew: the budgets, and what the last jobs learned about the run."""
    state.update(cancelled=False, failures=0, stalls=0)
    state.pop("requested_nodes", None)  # the resumed spec.yaml has the node count it asks for
    state.pop("segment_start", None)  # its first segment is a first one: no stall to count


def live_job(run: Path) -> str | None:
    """The id of the run's newest job while it is queued or running (SLURM, or the local process), else None;
    ``RunError`` when SLURM gives no answer."""
    from hpcft.backends import local
    from hpcft.slurm import client

    state = store.read_state(run)
    if not state["jobs"]:
        return None
    job = state["jobs"][-1]
    if not base.uses_slurm(state["backend"]):
        return job["id"] if local.job_alive(job) else None
    js = client.queued_job(job["id"])  # raises when SLURM does not answer: never taken for "not live"
    # COMPLETING: ended, SLURM is only tearing it down (e.g. just after `hpcft cancel`); the next job queues behind it.
    return job["id"] if js is not None and not js.ended and js.state != "COMPLETING" else None


def cancel(run: Path) -> str:
    """Cancel the newest job of a run and mark the run cancelled; return the job id."""
    state = store.read_state(run)
    job = store.newest_job(state)
    if job is None:
        raise RunError(f"{run.name} has no job to cancel")
    # Marked first, so an after-job woken by the cancel does not requeue; put back as it was if cancelling fails.
    with as_it_was(run, [STATE_FILE]):
        store.update_state(run, lambda s: s.update(cancelled=True))
        base.get(state["backend"]).load().cancel(job)
    return job["id"]


def submit_once(plan_in: Callable[[str | None], Plan], intent_id: str) -> tuple[Path, str, bool]:
    """Submit at most once per intent (a submission from a workstation: ``hpcft.rundir.intents``).

    ``plan_in(run_dir)`` plans the job in ``run_dir`` (None: a new one). Returns the run, its job and whether the
    job was submitted by an earlier attempt of the same intent (then nothing is submitted now).
    """
    from hpcft.rundir import intents

    first = plan_in(None)
    with intents.survive_hangup(), intents.claim(Path(first.spec.run.runs_dir), intent_id) as intent:
        if intent.job:
            return Path(intent.run or first.run_dir), intent.job, True
        if intent.run:
            run = Path(intent.run)
            if job := job_of(run):
                intent.done(job)
                return run, job, True
            if (run / STATE_FILE).is_file():  # written, but no job started from it
                job = start_in(plan_in(str(run)), run)
                intent.done(job)
                return run, job, False
        intent.begin(first.run_dir)
        run, job = submit(first)
        intent.done(job)
        return run, job, False


def job_of(run: Path) -> str | None:
    """The job of a run an interrupted submission may have started: state.json's, else SLURM's (by its comment)."""
    from hpcft.slurm import client

    with contextlib.suppress(RunError, OSError, KeyError):
        if job := store.newest_job(store.read_state(run)):
            return job["id"]
    found = [job for job, rd in client.user_jobs(client.RUN_COMMENT).items() if rd == str(run)]
    return found[0] if found else None
