"""``hpcft warn-timer RUN``: hpcft's own time-limit warning, re-armed from every measured save.

The batch script's ``#SBATCH --signal=B:USR1@LEAD`` is fixed when the script is written, before this
segment has saved anything; a requeue reuses it and a chained job resubmits it. A save that has grown past
that lead (a bigger model, a busy filesystem) would still be running at the limit: the batch shell is
killed, after-job never runs, the job ends TIMEOUT and is neither requeued nor chained.

So every segment of a requeueable run starts this timer beside the launcher (the batch script on the first
node; NodeTask under submitit). It reads the job's end from SLURM (``squeue %e``, again every few minutes:
an admin may extend the limit) and the run's last measured save (``state.json``: ``last_save_seconds``,
written by hpcft's trainer and by a user's HF Trainer alike), and at ``end − warning_lead`` it asks the ranks
to checkpoint exactly as the USR1 trap does (``RUN/PREEMPT``), saying so in the job's output. ``--signal``
stays as the backstop. A run whose trainer never reports a save keeps the initial lead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from hpcft.plan.requeue import warning_lead
from hpcft.rundir import lifecycle, store
from hpcft.slurm import client
from hpcft.slurm.env import slurm_job_id

RECHECK_END_S = 120  # how often SLURM is asked for the job's end again
POLL_S = 15  # how often the measured save time is read again


def next_wake(now: float, end: float, lead: int) -> float:
    """Seconds to sleep before looking again: until the warning is due, at most ``POLL_S``; 0: due now."""
    return max(0.0, min(end - lead - now, POLL_S))


def run_timer(
    run: Path,
    env: Mapping[str, str],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    end_time: Callable[[str], float | None] = client.job_end_time,
) -> str | None:
    """Wait for ``end − warning_lead`` and write ``RUN/PREEMPT``; the line said, or None when the job has no end
    SLURM can tell or the ranks were already asked (the USR1 trap, a preemption's SIGTERM)."""
    spec = store.load_run_spec(run)
    job = slurm_job_id(env)
    end, asked_at = end_time(job), clock()
    while end is not None:
        save = store.read_state(run).get("last_save_seconds")
        lead = warning_lead(spec, save)
        wait = next_wake(clock(), end, lead)
        if lifecycle.checkpoint_asked(run, env) is not None:
            return None  # asked already: the trap or hpcft node wrote it
        if wait <= 0:
            why = f"the last save took {save} s" if save else "no save measured yet"
            line = f"hpcft: warning {lead} s before the time limit ({why}): asking the ranks to checkpoint"
            lifecycle.ask_to_checkpoint(run, lifecycle.TIMER, env, f"lead={lead} save={save}")
            return line
        sleep(wait)
        if clock() - asked_at >= RECHECK_END_S:
            end, asked_at = end_time(job) or end, clock()
    return None
