"""``hpcft after-job RUN RC``: run by the batch script when the launcher ends; applies the requeue policy.

Reads the run's markers and, after a failure, whether SLURM ended a step of this job as
OUT_OF_MEMORY (its cgroup's OOM killer: a rerun would die the same way, so it is never requeued);
asks ``plan.requeue.decide``, records the outcome in state.json and, to requeue, calls
``scontrol requeue`` last (it ends the batch script itself). A job that may shrink (``--no-kill``,
``run.shrink_after``) and lost a node waits for it, then may run its batch script again on the nodes
it has left instead (``node_loss``, ``plan.requeue.after_node_loss``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.plan.requeue import Decision, after_node_loss, decide
from hpcft.rundir import lemons, lifecycle, store
from hpcft.rundir.layout import SCRIPT_FILE
from hpcft.slurm import client
from hpcft.slurm.env import allocation_left, expand_hosts, slurm_job_id


def after_job(run: Path, rc: int, *, requeue_job: bool = True) -> Decision:
    """Apply ``decide`` for this job; its exit code is the batch script's (unless requeued).

    ``requeue_job=False``: record a requeue decision but leave the requeue to the caller (submitit).
    """
    spec = store.load_run_spec(run)
    state = store.read_state(run)
    job_id = slurm_job_id(os.environ)
    oom = out_of_memory(job_id, os.environ) if rc != 0 and job_id else None
    saved = lifecycle.saved_for_requeue(run, os.environ) is not None  # this segment's, never a stale one
    asked = lifecycle.checkpoint_asked(run, os.environ)
    preempted = saved and asked == lifecycle.SIGTERM
    d = decide(
        rc,
        finished=lifecycle.finished_step(run) is not None,
        saved_for_requeue=saved,
        cancelled=bool(state.get("cancelled")),
        requeue_allowed=spec.run.requeue and bool(job_id),
        failures=int(state.get("failures", 0)),
        max_failures=spec.run.max_failures,
        fatal=lifecycle.fatal_reason(run) or (oom and f"{oom} ({OOM_HINT})"),
        warned_by=warned_by(asked, preempted),
        preemptions=int(state.get("preemptions", 0)),
        max_preemptions=spec.run.max_preemptions,
    )

    lossy = d.action == "requeue" and rc != 0 and not saved and spec.shrinks and requeue_job  # a node lost?
    d, left = node_loss(d, job_id, spec, run) if lossy else (d, [])

    event = _event(job_id, rc, d, oom=oom, kind=("preemption" if preempted else "time limit") if saved else None,
                   left=left)  # fmt: skip

    chain = d.action == "requeue" and requeue_job and spec.run.restart == "chain"
    if chain:
        d, chain = chain_or_fail(run, job_id, d, event)

    paid = store.world_shrunk(state, job_id, int(os.environ.get("SLURM_RESTART_COUNT") or 0), spec.ranks)

    def record(s: dict) -> None:  # paid: the ranks left after a node loss were charged for it at their restart
        s.setdefault("events", []).append(event)
        if d.action == "requeue":
            s["restarts"] = int(s.get("restarts", 0)) + (0 if chain else 1)  # a chained job counts as a later job
            if saved:
                s["preemptions"] = int(s.get("preemptions", 0)) + 1
        if d.action in ("requeue", "shrink") and not saved and rc != 0 and not paid:
            s["failures"] = int(s.get("failures", 0)) + 1

    store.update_state(run, record)
    lifecycle.fatal_recorded(run)
    print(f"hpcft: {d.action}: {d.reason}", flush=True)
    if d.action == "requeue":
        lifecycle.requeued(run)
        if requeue_job and not chain:
            hosts, note = lemons.to_exclude(run.parent, spec, client.partition_nodes)
            requeue(job_id, preempted, (hosts if hosts != spec.resources.exclude else None, note))
    if d.action == "shrink":
        continue_on(run, left)
    record_goodput(run)
    return d


def warned_by(asked: str | None, preempted: bool) -> str:
    """Who asked for the checkpoint this segment ended with, for the requeue's reason."""
    if asked == lifecycle.TIMER:
        return "hpcft's warning before the time limit"  # node/warn_timer.py: re-armed from the last save
    return "SLURM's SIGTERM (preemption)" if preempted else "the warning signal"


def record_goodput(run: Path) -> None:
    """The run's ETTR so far into state.json (``goodput``), for ``hpcft status`` over many runs, which reads no
    run's whole metrics log. Last, after the requeue, which must not wait for sacct — so a job SLURM requeues
    under its after-job records nothing here (begin-job does, for ``save_steps: auto``); never fatal."""
    from hpcft.ops import goodput  # the ledger (the runs directory's reader side) only here

    try:
        book = goodput.of_run(run)
        entry = {"ettr": book["ettr"], "held": book["held"], "as_of": store.now_iso()}
        store.update_state(run, lambda s: s.update(goodput=entry))
    except Exception as e:  # a figure for a listing: the job's end goes on without it
        print(f"hpcft: goodput not recorded: {e}", flush=True)


def _event(job_id: str, rc: int, d: Decision, *, oom: str | None, kind: str | None, left: list[str]) -> dict:
    """The state.json record of this job segment's end."""
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    event = {"job": job_id, "restart": restart, "rc": rc, "action": d.action, "reason": d.reason,
             "time": store.now_iso()}  # fmt: skip
    if oom:
        event["oom"] = oom
    if kind:
        event["kind"] = kind
    if d.action == "shrink":
        event.update(kind="node loss", nodes_left=",".join(left))  # the run goes on in this job: no restart
    return event


def continue_on(run: Path, hosts: list[str]) -> None:
    """Run this batch script again, on the nodes ``hosts`` the job holds now (its begin-job replans for them)."""
    sys.stdout.flush()
    os.execvpe("bash", ["bash", str(run / SCRIPT_FILE)], allocation_left(os.environ, hosts))


SHRINK_POLL_S = 10


def node_loss(d: Decision, job_id: str, spec, run: Path) -> tuple[Decision, list[str]]:
    """A crashed job that may shrink (``--no-kill``): the nodes it lost, waiting up to ``run.shrink_after`` for them
    to come back; the decision (``after_node_loss``) and the nodes the job still holds."""
    now = client.job_nodelist(job_id)
    if not now:
        return d, []
    left = expand_hosts(now)
    lost = [h for h in expand_hosts(os.environ.get("SLURM_JOB_NODELIST", "")) if h not in left]
    if not lost:
        return d, left
    limit = int(spec.run.shrink_after or 0)
    print(f"hpcft: job {job_id} lost {', '.join(lost)} ({len(left)} node(s) left); waiting up to {limit} s for "
          f"{'it' if len(lost) == 1 else 'them'} to come back (run.shrink_after)", flush=True)  # fmt: skip
    lemons.record(run.parent, lost, f"node lost by job {job_id}", run.name)  # a node that fails once may again
    start = time.monotonic()
    while True:
        states = client.node_states(lost)
        back = bool(states) and all(states.get(h) in client.USABLE_NODE_STATES for h in lost)
        waited = int(time.monotonic() - start)
        if back or waited >= limit:
            break
        time.sleep(min(SHRINK_POLL_S, limit - waited))
    min_nodes = spec.resources.min_nodes or spec.resources.nodes
    unfit = None if back else fits(run, len(left))
    return after_node_loss(d, lost, back, len(left), min_nodes=min_nodes, waited=waited, unfit=unfit), left


def fits(run: Path, nodes: int) -> str | None:
    """Why the run cannot be planned for ``nodes`` nodes (``plan.resume.plan_resize``), or None."""
    from hpcft.plan.resume import plan_resize

    try:
        plan_resize(run, nodes, python=sys.executable, now=datetime.now())
    except HpcftError as e:
        return e.message
    return None


def chain_or_fail(run: Path, job_id: str, d: Decision, event: dict) -> tuple[Decision, bool]:
    """Chain the run's next job into ``event``; (the decision, whether it was chained). When SLURM refused
    every try the run stops here, saying why and that its checkpoints are kept."""
    try:
        event["next_job"] = chain_next(run, job_id)
        return d, True
    except HpcftError as e:
        d = Decision("fail", f"chain: the next job could not be submitted ({e.message}); the checkpoints are "
                     f"kept: `hpcft resume {run.name}` continues", 1)  # fmt: skip
        event.update(action=d.action, reason=d.reason)
        return d, False


CHAIN_TRIES = 4
CHAIN_RETRY_S = 15  # a busy controller ("Socket timed out") usually answers again within seconds


def chain_next(run: Path, job_id: str) -> str:
    """``run.restart: chain``: submit the run's next job, to start once this one has ended; its id.

    ``afterany`` on this job and ``singleton`` (the job name is the run directory's): never two jobs
    of the run at once. The new job resumes from the newest complete checkpoint like a requeued one.
    A failed sbatch is tried again (``CHAIN_TRIES``), but first the run's jobs in squeue (``--comment=hpcft:RUN``)
    are asked: an sbatch that timed out may have submitted, and a retry must never submit twice.
    """
    argv = ("sbatch", "--parsable", f"--dependency=afterany:{job_id},singleton", str(run / SCRIPT_FILE))
    hint = f"the run directory and its checkpoints are kept: `hpcft resume {run.name}` continues the run"
    for attempt in range(1, CHAIN_TRIES + 1):
        try:
            next_id = client.submit(argv, hint=hint)
            break
        except HpcftError as e:
            error = e
        submitted = [j for j, rd in client.user_jobs(client.RUN_COMMENT).items() if rd == str(run) and j != job_id]
        if submitted:
            next_id = submitted[0]
            break
        print(f"hpcft: chain: sbatch failed (try {attempt} of {CHAIN_TRIES}): {error.message}", flush=True)
        if attempt == CHAIN_TRIES:
            raise error
        time.sleep(CHAIN_RETRY_S)
    store.record_job(run, next_id)
    print(f"hpcft: chain: the run continues in job {next_id} once job {job_id} has ended", flush=True)
    return next_id


def requeue(job_id: str, preempted: bool, exclude: tuple[str | None, str] = (None, "")) -> None:
    """``scontrol requeue`` (it ends this script); after a preemption SLURM may be requeueing the job itself.

    ``exclude``: the lemon nodes' host list and note (``rundir.lemons.to_exclude``). SLURM takes
    ``ExcNodeList`` only from a pending job, so it is set right after the requeue, with SIGTERM ignored:
    the requeue ends this job's processes, SIGTERM first and SIGKILL after ``KillWait`` seconds.
    """
    hosts, note = exclude
    if hosts:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by scontrol: the update outlives the requeue
    try:
        client.requeue(job_id)  # the job restarts with SLURM_RESTART_COUNT+1
    except HpcftError as e:
        if not preempted:
            raise
        print(f"hpcft: SLURM requeues the preempted job itself ({e.message})", flush=True)
    if note:
        print(f"hpcft: requeue: {note}", flush=True)
    if hosts:
        try:
            client.exclude_nodes(job_id, hosts)
        except HpcftError as e:
            print(f"hpcft: requeue: could not exclude {hosts}: {e.message}", flush=True)


OOM_HINT = "HINT: raise resources.mem, run fewer processes per node, or offload; `hpcft plan` shows the memory planner"


NO_STEP_S = 3  # sacct lists a step from its start; after the job's launcher ended, none by then means none


def out_of_memory(job_id: str, env: Mapping[str, str], wait_s: float = 15) -> str | None:
    """What SLURM says ran out of memory in this job, or None; waits for sacct to record the ended steps.

    A head-node launcher (pdsh) runs no step of its own: with no step listed after ``NO_STEP_S`` there is
    nothing to wait for.
    """
    start = time.monotonic()
    while True:
        launched = [s for s in client.query_steps(job_id) if not s.step.endswith((".batch", ".extern"))]
        oom = [s for s in launched if s.state == "OUT_OF_MEMORY"]
        waited = time.monotonic() - start
        if oom or (launched and all(s.state in client.ENDED for s in launched)) or waited > wait_s:
            break
        if not launched and waited > NO_STEP_S:
            break
        time.sleep(1)
    if not oom:
        return None
    limit = env.get("SLURM_MEM_PER_NODE")
    had = f"its memory limit of {limit} MB per node (--mem)" if limit else "its memory limit"
    peak = f"; sampled peak RSS {oom[0].max_rss}" if oom[0].max_rss.strip("0K") else ""
    return f"out of memory: step {oom[0].step} on {oom[0].nodes} was killed by SLURM at {had}{peak}"
