"""``hpcft begin-job RUN``: the batch script's first step, however the script was submitted.

Records this job (id, start time, nodes, restart count) in state.json, so a job sbatched by hand,
by ``submit``, by ``resume`` or requeued by SLURM is one run's history for status, logs, cancel and
resume. Says in the job output where the allocation differs from spec.yaml (a hand edit of the
``#SBATCH`` lines): the node side reads the allocation from SLURM, so the allocation wins. A run
that is FINISHED ends the job at once (exit ``STOP``) with how to continue it; one that has started
``run.max_stalls`` segments in a row from the same checkpoint stops (``record_progress``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcft.errors import HpcftError
from hpcft.plan import save_interval
from hpcft.plan.requeue import progress
from hpcft.rundir import checkpoints, lifecycle, store
from hpcft.rundir.layout import SCRIPT_FILE
from hpcft.slurm.env import ClusterEnv

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

STOP = 10  # the batch script ends with exit 0 on this code: nothing to do


def allocation_notes(spec_nodes: int, spec_gpus: int, cluster: ClusterEnv) -> list[str]:
    """Where SLURM's allocation differs from the spec's resources; pure."""
    notes = []
    if cluster.num_nodes != spec_nodes:
        notes.append(f"nodes: {cluster.num_nodes} allocated, spec.yaml says {spec_nodes}")
    if cluster.gpus_on_node is not None and cluster.gpus_on_node != spec_gpus:
        notes.append(f"GPUs per node: {cluster.gpus_on_node} allocated, spec.yaml says {spec_gpus}")
    return notes


# Events recorded while a run of the job goes on, none of them its end: a rank restart (a crash or a hang,
# in the job), a slow node named, a lost node the job continues without (shrink: the batch script again).
WITHIN_A_RUN = ("in-job restart", "hang", "straggler", "node loss")


def lost_segment(state: Mapping[str, Any], job_id: str, restart: int, now: str) -> dict[str, Any] | None:
    """The event for this job's previous run when it ended without after-job; pure.

    On node failure SLURM kills the batch script (no after-job step runs) and, with ``--requeue``,
    requeues the job (``docs/facts.md``): the only trace is a requeued job whose previous
    run recorded no outcome (``WITHIN_A_RUN`` events are none). That is a crash, counted against
    ``run.max_failures``.
    """
    if restart < 1:
        return None
    previous = restart - 1
    for event in state.get("events", []):
        same_run = event.get("job") == job_id and event.get("restart", previous) == previous
        if same_run and event.get("kind") not in WITHIN_A_RUN:
            return None
    return {
        "job": job_id,
        "restart": previous,
        "kind": "lost",
        "action": "requeued by SLURM",
        "reason": "the job ended without its after-job step: a node failed (SLURM requeued the job) or the batch "
        "script was killed",
        "time": now,
    }


def record_lost(run: Path, job_id: str, restart: int, max_failures: int, ranks: int = 0) -> str | None:
    """Record a lost previous run of this job; why to stop when that spends the failure budget, else None.

    A run whose ranks went on without a lost node (``ranks``: spec.yaml's, ``store.world_shrunk``) paid for that
    node at their restart: its end, SLURM's for the same node, is no second failure."""
    verdict: list[str] = []
    lost: dict[str, Any] = {}

    def change(state: dict[str, Any]) -> None:
        event = lost_segment(state, job_id, restart, store.now_iso())
        if event is None:
            return
        lost.update(next((j for j in state.get("jobs", []) if j.get("id") == job_id), {}))  # its nodes, start
        paid = store.world_shrunk(state, job_id, restart - 1, ranks)
        state["failures"] = failures = int(state.get("failures", 0)) + (0 if paid else 1)
        state.setdefault("events", []).append(event)
        print(f"hpcft: the previous run of job {job_id} was lost: {event['reason']} (failure {failures} of "
              f"{max_failures})", flush=True)  # fmt: skip
        if failures > max_failures:
            event["action"] = "fail"
            verdict.append(f"failure budget {failures}/{max_failures} spent (run.max_failures); hpcft resume RUN")

    store.update_state(run, change)
    if lost:
        record_failed_nodes(run, job_id, lost)
    return verdict[0] if verdict else None


DOWN_STATES = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING")


def failed_nodes(events: Sequence[tuple[str, float, str, str]], nodes: Sequence[str], since: float) -> dict[str, str]:
    """The nodes of a lost segment (``nodes``, started at ``since``) that SLURM marked down or drained while it ran,
    with SLURM's reason: what ended the job NODE_FAIL (``client.node_events``); pure."""
    return {node: reason or state for node, when, state, reason in events
            if node in nodes and when >= since - 1 and any(s in state.upper() for s in DOWN_STATES)}  # fmt: skip


def record_failed_nodes(run: Path, job_id: str, segment: Mapping[str, Any]) -> None:
    """A lost segment's failed nodes become lemons (``rundir.lemons``): later requeues and submissions of this runs
    directory exclude them. SLURM's accounting names them (node events); without accounting nothing is named."""
    from hpcft.rundir import lemons
    from hpcft.slurm import client

    nodes = [n for n in str(segment.get("nodes") or "").split(",") if n]
    try:
        since = datetime.fromisoformat(str(segment.get("started"))).timestamp()
    except ValueError:
        return
    failed = failed_nodes(client.node_events(nodes, since), nodes, since)
    for node, reason in sorted(failed.items()):
        lemons.record(run.parent, [node], f"down during job {job_id} ({reason})", run.name)
        print(f"hpcft: {node} went down during the lost run ({reason}): remembered as a lemon (`hpcft nodes`)",
              flush=True)  # fmt: skip


def follow_allocation(run: Path, nodes: int) -> None:
    """Rewrite spec.yaml and the ranks' configs for the ``nodes`` SLURM gave this job, the global batch kept
    (``plan.resume.plan_resize``); the batch script stays as it is. Where they cannot follow, says why."""
    from hpcft.plan.resume import plan_resize

    asked = store.load_run_spec(run).resources.nodes
    if nodes < asked:  # a shrink: `hpcft resume` plans the run's own node count again, not the shrunk one
        store.update_state(run, lambda s: s.setdefault("requested_nodes", asked))
    try:
        rp = plan_resize(run, nodes, python=sys.executable, now=datetime.now())
        for name, text in rp.plan.files.items():
            if name != SCRIPT_FILE:
                store.write_atomic(run / name, text)
    except HpcftError as e:
        print(f"hpcft: spec.yaml stays as it is ({e.message})", flush=True)
        return
    for note in rp.notes:
        print(f"hpcft: spec.yaml now says {nodes} node(s): {note}", flush=True)


def begin_job(run: Path, env: Mapping[str, str]) -> int:
    """Record the job and check the run; 0 to go on, ``STOP`` when the run is already finished."""
    try:
        spec = store.load_run_spec(run)
    except HpcftError as e:
        print(f"hpcft: {e}", flush=True)
        return 3
    missing = [name for name in spec.launch.env_passthrough if name not in env]
    if missing:
        # E.g. job.sbatch submitted by hand from a shell without them: the ranks would fail late, or run without.
        print(f"hpcft: launch.env_passthrough names {', '.join(missing)}, which this job's environment does not "
              "have: sbatch passes the environment of the shell it runs in (HINT: export them, then sbatch "
              "again)", flush=True)  # fmt: skip
        return 3
    cluster = ClusterEnv.from_mapping(env)
    if cluster.job_id:
        stop = record_lost(run, cluster.job_id, cluster.restart_count, spec.run.max_failures, spec.ranks)
        store.record_job(run, cluster.job_id, started=store.now_iso(), nodes=",".join(cluster.hosts),
                         restart=cluster.restart_count, rank_starts=0)  # fmt: skip
        if stop:
            print(f"hpcft: not continuing: {stop}", flush=True)
            return 1
    for note in allocation_notes(spec.resources.nodes, spec.resources.gpus_per_node, cluster):
        print(f"hpcft: the allocation differs from spec.yaml, the allocation wins: {note}", flush=True)
    if cluster.job_id and cluster.num_nodes != spec.resources.nodes:
        follow_allocation(run, cluster.num_nodes)
    step = lifecycle.finished_step(run)
    if step is not None:
        step = step or "?"
        print(f"hpcft: {run.name} is FINISHED (step {step}): nothing to train; this job ends now. To train "
              f"further: hpcft resume {run} -o train.max_steps=N", flush=True)  # fmt: skip
        return STOP
    stop = record_progress(run, spec, lifecycle.segment(env))
    if stop:
        print(f"hpcft: not continuing: {stop}", flush=True)
        return 1
    if spec.train.save_steps == "auto":
        choose_save_steps(run, spec, cluster.num_nodes or spec.resources.nodes)
    return 0


def choose_save_steps(run: Path, spec: JobSpec, nodes: int, runs_of=None) -> None:
    """``train.save_steps: auto``: the interval for this job from the run's own save time (the median of its
    saves), step time and faults
    (``hpcft.plan.save_interval``), recorded for the ranks (``state.json: auto_save``) and said in the output.
    The time held comes from the ledger (sacct: ``runs_of``) here: after-job's own record is lost when SLURM
    requeues the job under it."""
    from hpcft.ops import goodput  # the ledger: the time held so far and the step time

    try:
        state, book, save_s, step_s = goodput.measured(run, runs_of=runs_of)
    except HpcftError as e:  # damaged metrics: the choice without the run's own figures
        print(f"hpcft: train.save_steps auto: {e}", flush=True)
        state, book, save_s, step_s = store.read_state(run), {"ettr": None, "held": None}, None, None
    held = book["held"] or (state.get("goodput") or {}).get("held")  # sacct forgot: after-job's last record
    choice = save_interval.auto_save_steps(state.get("events", []), held, save_s, step_s, nodes,
                                           (spec.train.save_steps_min, spec.train.save_steps_max))  # fmt: skip
    entry = {"ettr": book["ettr"], "held": held, "as_of": store.now_iso()}
    store.update_state(run, lambda s: s.update(auto_save=choice, goodput=entry))
    print(f"hpcft: train.save_steps auto: every {choice['save_steps']} steps ({choice['why']})", flush=True)


def record_progress(run: Path, spec: JobSpec, segment: str) -> str | None:
    """Record where this segment starts (the newest committed checkpoint); why to stop when the run has made no
    progress in ``run.max_stalls`` segments in a row (``plan.requeue.progress``), else None."""
    found = checkpoints.newest_resumable(checkpoints.checkpoints_dir(spec, run))
    newest = checkpoints.step_of(found) if found else None
    verdict: list[str] = []

    def change(state: dict[str, Any]) -> None:
        last = state.get("segment_start")
        previous = (str(last[0]), last[1]) if isinstance(last, list) and len(last) == 2 else None
        stalls, stop = progress(previous, segment, newest, int(state.get("stalls", 0) or 0), spec.run.max_stalls)
        state.update(segment_start=[segment, newest], stalls=stalls)
        if stop:
            event = {"job": segment.rsplit(".", 1)[0], "kind": "no progress", "action": "fail", "reason": stop}
            state.setdefault("events", []).append({**event, "time": store.now_iso()})
            verdict.append(stop)

    store.update_state(run, change)
    return verdict[0] if verdict else None
