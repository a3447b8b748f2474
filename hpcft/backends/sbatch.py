"""The sbatch backend: the run directory holds job.sbatch; ``sbatch --parsable`` submits it.

``prepare`` renders the batch script in the shape of the job's launcher (pure); ``start`` submits
the written script; ``cancel`` is ``scancel``.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from hpcft.backends.base import Prepared
from hpcft.launchers.base import shape_of
from hpcft.plan import container
from hpcft.rundir import lemons, store
from hpcft.rundir.layout import LOGS_DIR, SCRIPT_FILE
from hpcft.slurm import client, script
from hpcft.slurm.env import ClusterEnv

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan
    from hpcft.spec import JobSpec

DESCRIPTIONS = {
    "per_node": "One task per node runs `hpcft node`, which reads the allocation from SLURM's environment,\n"
    "works out the rendezvous (master = first node, port from the job id) and starts the launcher.",
    "head_node": "`hpcft node` runs once, on the first node, and starts the launcher there; the launcher\n"
    "reaches every node of the allocation itself (hostfile in the run directory).",
    "per_rank": "srun starts one task per GPU (per process on CPU); each task is one rank: `hpcft node`\n"
    "maps SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS to RANK/LOCAL_RANK/WORLD_SIZE and runs it.",
}


def prepare(spec: JobSpec, run: str, node_argv: tuple[str, ...], signal_lead: int | None) -> Prepared:
    """``job.sbatch`` and ``sbatch --parsable RUN/job.sbatch``."""
    script_path = str(PurePath(run) / SCRIPT_FILE)
    text = render_script(spec, run, script_path, node_argv, signal_lead)
    return Prepared(
        {SCRIPT_FILE: text},
        ("sbatch", "--parsable", script_path),
        ClusterEnv.preview(spec.resources.nodes, spec.resources.gpus_per_node),
    )


def render_script(
    spec: JobSpec, run: str, script_path: str, node_argv: tuple[str, ...], signal_lead: int | None
) -> str:
    """The batch script for ``spec``, in the shape of its launcher (see ``hpcft.launchers.base.SHAPES``)."""
    shape = shape_of(spec.launch.launcher)
    tasks = 1 if shape == "per_node" else (spec.resources.gpus_per_node or 1)
    srun_options: tuple[str, ...] = ()
    if spec.launch.container.enabled:  # the srun task runs hpcft node inside the image
        srun_options, node_argv = container.wrap(spec, run)
    chain = spec.run.restart == "chain"
    flags = script.format_sbatch_options(
        spec.resources,
        job_name=PurePath(run).name if chain else spec.run.name,  # chain: --dependency=singleton goes by name
        chdir=run,
        output=script.filename_pattern(run) + f"/{LOGS_DIR}/slurm-%j.out",
        tasks_per_node=tasks,
        signal_lead=signal_lead,
        comment=f"{client.RUN_COMMENT}{run}",  # squeue %k: which run a job belongs to (hpcft status --from-squeue)
        chain=chain,
        no_kill=spec.shrinks,
    )
    ctx = script.make_context(
        f"{shape}.sbatch.j2",
        run_dir=run,
        script_path=script_path,
        flags=flags,
        setup=spec.launch.setup,
        node_argv=list(node_argv),
        nodes=spec.resources.nodes,
        tasks_per_node=tasks,
        description=DESCRIPTIONS[shape],
        requeue=spec.run.requeue,
        after_argv=[spec.launch.python, "-m", "hpcft", "after-job", run],
        begin_argv=[spec.launch.python, "-m", "hpcft", "begin-job", run],
        warn_argv=[spec.launch.python, "-m", "hpcft", "warn-timer", run],
        srun_options=srun_options,
        # ranks with no hpcft node beside them (started over ssh; srun's tasks): a watcher on each of their nodes
        watch_argv=[*node_argv[:-2], "node-watch", run] if shape != "per_node" and spec.run.hang_timeout else (),
    )
    return script.render_sbatch(ctx)


def start(plan: Plan, run: Path) -> str:
    """Submit the already written ``job.sbatch``; return the job id.

    Lemon nodes (``rundir.lemons``: named by recent faults in this runs directory) are excluded on the
    command line, which sbatch reads over the script's ``#SBATCH --exclude``, where the partition keeps
    enough nodes without them; the job output says so at its start (begin-job).
    """
    exclude, note = lemons.to_exclude(run.parent, plan.spec, client.partition_nodes)
    argv = list(plan.submit_argv)
    if exclude != plan.spec.resources.exclude:
        argv.insert(len(argv) - 1, f"--exclude={exclude}")  # before the script: after it, it is the script's
    job_id = client.submit(argv)
    store.record_job(run, job_id, **({"lemons": note} if note else {}))
    return job_id


def cancel(job: dict) -> None:
    """``scancel`` the job."""
    client.cancel(job["id"])
