"""``hpcft begin-job RUN``: the batch script's first step, however the script was submitted.

Records this job (id, start time, nodes, restart count) in state.json, so a job sbatched by hand,
by ``submit``, by ``resume`` or requeued by SLURM is one run's history for status, logs, cancel and
resume. Says in the job output where the allocation differs from spec.yaml (a hand edit of the
``#SBATCH`` lines): the node side reads the allocation from SLURM, so the allocation wins. A run
that is FINISHED ends the job at once (exit ``STOP``) with how to continue it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.rundir import store
from hpcft.rundir.layout import FINISHED_FILE
from hpcft.slurm.env import ClusterEnv

STOP = 10  # the batch script ends with exit 0 on this code: nothing to do


def allocation_notes(spec_nodes: int, spec_gpus: int, cluster: ClusterEnv) -> list[str]:
    """Where SLURM's allocation differs from the spec's resources; pure."""
    notes = []
    if cluster.num_nodes != spec_nodes:
        notes.append(f"nodes: {cluster.num_nodes} allocated, spec.yaml says {spec_nodes}")
    if cluster.gpus_on_node is not None and cluster.gpus_on_node != spec_gpus:
        notes.append(f"GPUs per node: {cluster.gpus_on_node} allocated, spec.yaml says {spec_gpus}")
    return notes


def begin_job(run: Path, env: Mapping[str, str]) -> int:
    """Record the job and check the run; 0 to go on, ``STOP`` when the run is already finished."""
    try:
        spec = store.load_run_spec(run)
    except HpcftError as e:
        print(f"hpcft: {e}", flush=True)
        return 3
    cluster = ClusterEnv.from_mapping(env)
    if cluster.job_id:
        store.record_job(run, cluster.job_id, started=store.now_iso(), nodes=",".join(cluster.hosts),
                         restart=cluster.restart_count)  # fmt: skip
    for note in allocation_notes(spec.resources.nodes, spec.resources.gpus_per_node, cluster):
        print(f"hpcft: the allocation differs from spec.yaml, the allocation wins: {note}", flush=True)
    finished = run / FINISHED_FILE
    if finished.exists():
        step = finished.read_text().strip() or "?"
        print(f"hpcft: {run.name} is FINISHED (step {step}): nothing to train; this job ends now. To train "
              f"further: hpcft resume {run} -o train.max_steps=N", flush=True)  # fmt: skip
        return STOP
    return 0
