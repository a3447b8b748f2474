"""The requeue policy: what to do when the launcher ends inside a batch job; pure.

``decide`` returns finished, requeue or fail for the launcher's exit code and the run's markers;
``hpcft.node.after_job`` applies it. A run marked FINISHED, or cancelled, is never requeued; a
crash is requeued only while the failure budget (``run.max_failures``) lasts; a checkpoint taken
after the warning signal (``RUN/REQUEUE``) is always requeued. ``signal_lead`` sizes the warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcft.launchers.base import shape_of
from hpcft.spec.model import slurm_minutes

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

DEFAULT_LEAD = 180  # seconds, until a save has been measured


@dataclass(frozen=True)
class Decision:
    """What to do with a batch job whose launcher has ended."""

    action: str  # "done" | "requeue" | "fail" | "shrink" (continue on the nodes left, ``after_node_loss``)
    reason: str
    exit_code: int


def decide(rc: int, *, finished: bool, saved_for_requeue: bool, cancelled: bool, requeue_allowed: bool,
           failures: int, max_failures: int, fatal: str | None = None, warned_by: str = "the warning signal",
           preemptions: int = 0, max_preemptions: int | None = None) -> Decision:  # fmt: skip
    """The outcome for launcher exit code ``rc`` and the run's markers; pure.

    ``fatal`` says why a rerun would fail the same way (a node's preflight: no run dir, loopback master,
    launcher missing; or a configuration error the trainer raised): such a job is never requeued.
    A checkpoint after a warning (``warned_by``: the time-limit signal, SLURM's SIGTERM on preemption)
    is no failure; such stops have their own budget, ``max_preemptions`` (None: unlimited).
    """
    if finished:
        return Decision("done", "the run is FINISHED", 0)
    if cancelled:
        return Decision("done", "the run was cancelled", rc or 0)
    if fatal:
        return Decision("fail", f"{fatal} (not requeued: a rerun would fail the same way)", rc or 3)
    if saved_for_requeue:
        if not requeue_allowed:
            return Decision("done", f"checkpointed after {warned_by}; run.requeue is off (hpcft resume RUN)", 0)
        if max_preemptions is not None and preemptions >= max_preemptions:
            budget = f"run.max_preemptions {preemptions}/{max_preemptions} spent"
            return Decision("done", f"checkpointed after {warned_by}; {budget} (hpcft resume RUN)", 0)
        return Decision("requeue", f"checkpointed after {warned_by}", 0)
    if rc != 0:
        if requeue_allowed and failures < max_failures:
            return Decision("requeue", f"launcher failed with {rc}; requeue {failures + 1} of {max_failures}", rc)
        return Decision("fail", f"launcher failed with {rc}; failure budget {failures}/{max_failures} spent", rc)
    return Decision("done", "the launcher ended without error", 0)


def progress(
    previous: tuple[str, int | None] | None, segment: str, newest: int | None, stalls: int, max_stalls: int
) -> tuple[int, str | None]:
    """The run's stall count at the start of job segment ``segment`` and why to stop (None: go on); pure.

    ``previous``: the segment that started last and the newest committed checkpoint's step then (None: none);
    ``newest``: that step now. A segment that starts from the same checkpoint as the last one follows a
    segment that committed nothing — a crash or node-failure loop, preemptions before the first save — and
    ``max_stalls`` of them in a row stop the run (each would cost a queue wait and an allocation for nothing).
    The same segment starting again (the batch script rerun after a shrink) counts once.
    """
    if previous is None or previous[0] == segment:
        return stalls, None
    stalls = stalls + 1 if newest == previous[1] else 0
    if stalls < max_stalls:
        return stalls, None
    where = f"checkpoint-{newest}" if newest is not None else "no checkpoint yet"
    return stalls, (
        f"{stalls} job segments in a row started from the same point ({where}): the run makes no "
        f"progress (run.max_stalls {max_stalls}); see the events in state.json, then hpcft resume RUN"
    )


def after_node_loss(d: Decision, lost: list[str], back: bool, left: int, *, min_nodes: int, waited: int,
                    unfit: str | None = None) -> Decision:  # fmt: skip
    """A crash requeue ``d`` of a job that lost the nodes ``lost``: continue on the ``left`` nodes, or requeue; pure.

    ``back``: the lost nodes came back within ``run.shrink_after`` (``waited`` seconds). Then, or with fewer
    than ``resources.min_nodes`` left, the job is requeued at its full size; else it continues on the nodes
    it still holds (``"shrink"``), from the newest checkpoint, with the global batch kept; ``unfit`` says why
    the run cannot continue on them (their ranks cannot share the global batch evenly).
    """
    names = ", ".join(lost)
    if back:
        return Decision(d.action, f"{d.reason}; {names} came back within {waited} s: requeued at full size",
                        d.exit_code)  # fmt: skip
    if left < min_nodes:
        return Decision(d.action, f"{d.reason}; {names} lost and {left} node(s) left, fewer than "
                        f"resources.min_nodes ({min_nodes}): requeued at full size", d.exit_code)  # fmt: skip
    if unfit:
        return Decision(d.action, f"{d.reason}; {names} lost, and the run cannot continue on the {left} node(s) "
                        f"left: {unfit}; requeued at full size", d.exit_code)  # fmt: skip
    return Decision("shrink", f"{names} lost (the launcher exited with {d.exit_code}) and not back after {waited} s "
                    f"(run.shrink_after): continuing on the {left} node(s) left", d.exit_code)  # fmt: skip


@dataclass(frozen=True)
class InJobRestarts:
    """Who restarts crashed ranks inside the allocation, and how often at most in this job segment."""

    by: str | None  # "torchrun" (its own agents), "hpcft" (``hpcft node``'s loop) or None (requeue only)
    count: int
    why: str


def in_job_restarts(spec: JobSpec, num_nodes: int, failures: int) -> InJobRestarts:
    """In-job restarts for a segment that starts with ``failures`` already spent; pure.

    torchrun's agents restart every node's workers together when one fails (the c10d rendezvous
    tells the healthy agents a node is waiting); a static rendezvous tells nobody, so across nodes it
    cannot. Where one process launches everything (the head-node launchers, any launcher on one
    node) ``hpcft node`` reruns it. Each restart is a failure: ``run.max_failures`` bounds restarts
    and requeues together (the trainer's rank 0 records each restart in state.json).
    """
    left = max(0, spec.run.max_failures - failures)
    launcher = spec.launch.launcher
    if not spec.run.restart_in_job:
        return InJobRestarts(None, 0, "run.restart_in_job is off: a crash requeues the job")
    if launcher == "torchrun" and (spec.launch.rdzv == "c10d" or num_nodes == 1):
        return InJobRestarts("torchrun", left, f"torchrun restarts all ranks up to {left} times")
    if shape_of(launcher) == "head_node" or (shape_of(launcher) == "per_node" and num_nodes == 1):
        return InJobRestarts("hpcft", left, f"hpcft node reruns {launcher} up to {left} times")
    return InJobRestarts(None, 0, f"{launcher} on {num_nodes} nodes cannot restart in the job: a crash requeues it")


def signal_lead(save_seconds: float | None) -> int:
    """Seconds of warning before the time limit: room for three saves and a step, at least a minute."""
    if not save_seconds:
        return DEFAULT_LEAD
    return max(60, math.ceil(3 * save_seconds + 30))


def warning_lead(spec: JobSpec, save_seconds: float | None) -> int:
    """The warning's lead: ``run.signal_lead`` or ``signal_lead`` (3 × the last measured save + 30 s, 180 s until
    one is measured), capped at half the time limit (a short job still trains first) — but never under what the
    measured save itself needs (``save_floor``): a warning that leaves too little time loses the whole segment.

    ``run.signal_lead`` is the least lead: a slow save measured later raises it (hpcft's warning timer re-arms
    from each measured save, ``node.warn_timer``). SLURM checks time limits on a timer and may fire
    ``--signal`` up to 60 s early (man sbatch, --signal).
    """
    lead = signal_lead(save_seconds)
    if spec.resources.time:
        lead = min(lead, max(slurm_minutes(spec.resources.time) * 60 // 2, 1))
    if spec.run.signal_lead:
        lead = max(spec.run.signal_lead, lead) if save_seconds else spec.run.signal_lead
    return max(lead, save_floor(save_seconds))


def save_floor(save_seconds: float | None) -> int:
    """The least lead a measured save needs: the save, and 30 s for the step before it and after-job's decision."""
    return math.ceil(save_seconds + 30) if save_seconds else 0
