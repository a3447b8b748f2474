"""JobSpec → Plan: everything a submission will do, as a value; pure.

``make_plan`` runs no command and touches no file. The plan holds the exact submit argv, the
files of the run directory (resolved spec, batch script) and a preview of what node 0 will
execute, so ``hpcft plan`` / ``--dry-run`` show precisely what ``submit`` then carries out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

import yaml

from hpcft.launchers import LaunchCommand, LaunchContext, build_launch, shape_of
from hpcft.requeue import signal_lead
from hpcft.slurm import script
from hpcft.slurm.env import ClusterEnv, master_port
from hpcft.spec import JobSpec, build_spec, spec_to_dict

SPEC_FILE = "spec.yaml"
SCRIPT_FILE = "job.sbatch"
DESCRIPTIONS = {
    "per_node": "One task per node runs `hpcft node`, which reads the allocation from SLURM's environment,\n"
    "works out the rendezvous (master = first node, port from the job id) and starts the launcher.",
    "head_node": "`hpcft node` runs once, on the first node, and starts the launcher there; the launcher\n"
    "reaches every node of the allocation itself (hostfile in the run directory).",
    "per_rank": "srun starts one task per GPU (per process on CPU); each task is one rank: `hpcft node`\n"
    "maps SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS to RANK/LOCAL_RANK/WORLD_SIZE and runs it.",
}


@dataclass(frozen=True)
class Plan:
    """A submission, fully decided.

    Attributes:
        spec: the resolved spec (backend and python filled in); written to ``run_dir/spec.yaml``.
        run_dir: the run directory on the shared filesystem.
        files: run-dir-relative path → text, written before submitting.
        submit_argv: the command that submits (``sbatch --parsable …`` or the local runner).
        node_preview: what node 0 would execute (rendezvous values as SLURM would give them).
        rendezvous: a human-readable summary of the rendezvous.
    """

    spec: JobSpec
    run_dir: str
    files: Mapping[str, str]
    submit_argv: tuple[str, ...]
    node_preview: LaunchCommand
    rendezvous: Mapping[str, str]

    @property
    def backend(self) -> str:
        """``sbatch`` or ``local``."""
        return self.spec.launch.backend


def resolve_backend(spec: JobSpec, sbatch_available: bool) -> JobSpec:
    """Replace ``backend: auto`` by ``sbatch`` when sbatch is on PATH, else ``local``."""
    if spec.launch.backend != "auto":
        return spec
    backend = "sbatch" if sbatch_available else "local"
    return dataclasses.replace(spec, launch=dataclasses.replace(spec.launch, backend=backend))


def run_dir_name(name: str, now: datetime) -> str:
    """``NAME-YYYYmmdd-HHMMSS``; only ``/`` (a path separator) is replaced in the name."""
    return f"{name.replace('/', '_')}-{now:%Y%m%d-%H%M%S}"


def make_plan(
    spec: JobSpec, *, python: str, now: datetime, run_dir: str | None = None, save_seconds: float | None = None
) -> Plan:
    """Decide everything about submitting ``spec``.

    Args:
        spec: a validated spec whose backend is already resolved (see ``resolve_backend``).
        python: the interpreter every node runs (used unless ``launch.python`` is set).
        now: the submission time, for the run directory name.
        run_dir: an existing run directory to reuse (resume); default: a new one under runs_dir.
        save_seconds: the run's last measured checkpoint time, to size the warning signal's lead.
    """
    spec = dataclasses.replace(spec, launch=dataclasses.replace(spec.launch, python=spec.launch.python or python))
    run = run_dir or str(PurePath(spec.run.runs_dir) / run_dir_name(spec.run.name, now))
    files = {SPEC_FILE: dump_spec(spec)}
    from hpcft import zero  # ds_config.json when DeepSpeed is used: shown here, read by the trainer
    from hpcft.spec import spec_notes

    files.update(zero.plan_files(spec, run))
    if notes := spec_notes(spec):
        files["NOTES.txt"] = "".join(f"- {note}\n" for note in notes)
    node_argv = [spec.launch.python, "-m", "hpcft", "node", run]
    if spec.launch.backend == "sbatch":
        script_path = str(PurePath(run) / SCRIPT_FILE)
        files[SCRIPT_FILE] = render_script(spec, run, script_path, node_argv, save_seconds)
        submit_argv: tuple[str, ...] = ("sbatch", "--parsable", script_path)
        preview_cluster = preview_cluster_env(spec)
    elif spec.launch.backend == "submitit":
        from hpcft.backends.submitit import FOLDER, executor_parameters

        params = executor_parameters(spec)
        files["submitit.yaml"] = "# submitit AutoExecutor parameters (reference; submitit writes its own script)\n" + (
            yaml.safe_dump(params, sort_keys=False)
        )
        submit_argv = ("submitit.AutoExecutor", f"folder={PurePath(run) / FOLDER}", *sorted(params))
        preview_cluster = preview_cluster_env(spec)
    else:
        submit_argv = tuple(node_argv)
        preview_cluster = ClusterEnv.local({})
    ctx = LaunchContext(spec, preview_cluster, run, spec.launch.python, preview_cluster.master_host)
    preview = build_launch(ctx)
    rdzv = {
        "nodes": str(spec.resources.nodes),
        "processes per node": str(ctx.procs_per_node),
        "world size": str(ctx.procs_per_node * spec.resources.nodes),
        "master": "first node of the allocation" if preview_cluster.in_slurm else "127.0.0.1",
        "port": f"{master_port('JOBID', {})}+(JOBID mod 10000), or $MASTER_PORT",
        "node rank": "SLURM_NODEID" if preview_cluster.in_slurm else "0",
    }
    return Plan(spec, run, files, submit_argv, preview, rdzv)


def render_script(
    spec: JobSpec, run: str, script_path: str, node_argv: list[str], save_seconds: float | None = None
) -> str:
    """The batch script for ``spec``, in the shape of its launcher (see ``hpcft.launchers.SHAPES``)."""
    shape = shape_of(spec.launch.launcher)
    tasks = 1 if shape == "per_node" else (spec.resources.gpus_per_node or 1)
    lead = (spec.run.signal_lead or signal_lead(save_seconds)) if spec.run.requeue else None
    flags = script.format_sbatch_options(
        spec.resources,
        job_name=spec.run.name,
        chdir=run,
        output=script.filename_pattern(run) + "/logs/slurm-%j.out",
        tasks_per_node=tasks,
        signal_lead=lead,
    )
    ctx = script.make_context(
        f"{shape}.sbatch.j2",
        run_dir=run,
        script_path=script_path,
        flags=flags,
        setup=spec.launch.setup,
        node_argv=node_argv,
        nodes=spec.resources.nodes,
        tasks_per_node=tasks,
        description=DESCRIPTIONS[shape],
        requeue=spec.run.requeue,
        after_argv=[node_argv[0], "-m", "hpcft", "after-job", run],
    )
    return script.render_sbatch(ctx)


def preview_cluster_env(spec: JobSpec) -> ClusterEnv:
    """The allocation as node 0 will see it, with placeholder host names and job id."""
    n = spec.resources.nodes
    return ClusterEnv(
        job_id="JOBID",
        hosts=tuple(f"<node{i}>" for i in range(n)),
        node_rank=0,
        master_host="<node0>",
        master_port=master_port("0", {}),
        gpus_on_node=spec.resources.gpus_per_node or None,
    )


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML: the only input of the node and training side."""
    header = "# Resolved by hpcft; the node and training side read only this file.\n"
    return header + yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)


def load_spec_text(text: str, source: str) -> JobSpec:
    """Parse a resolved spec written by ``dump_spec``."""
    return build_spec(yaml.safe_load(text) or {}, source=source)
