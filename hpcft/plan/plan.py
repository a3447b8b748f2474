"""JobSpec → Plan: everything a submission will do, as a value; pure.

``make_plan`` runs no command and touches no file. The plan holds the exact submit argv, the
files of the run directory (resolved spec, batch script) and a preview of what node 0 will
execute, so ``hpcft plan`` / ``--dry-run`` show precisely what ``submit`` then carries out.
What differs between backends is each backend's ``prepare`` (``hpcft.backends.base``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

from hpcft.backends import base as backends
from hpcft.errors import ConfigError
from hpcft.launchers.base import LaunchCommand, LaunchContext, build_launch
from hpcft.plan import deepspeed, memory
from hpcft.plan.requeue import in_job_restarts, warning_lead
from hpcft.rundir.layout import DS_CONFIG_FILE, NOTES_FILE, SPEC_FILE
from hpcft.slurm.env import master_port
from hpcft.spec import JobSpec, dump_spec, spec_notes


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
        """The backend's registered name (``sbatch``, ``local``, ``submitit``)."""
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
    files.update(deepspeed_files(spec, run))  # ds_config.json when DeepSpeed is used: shown here, read by ranks
    if notes := spec_notes(spec):
        files[NOTES_FILE] = "".join(f"- {note}\n" for note in notes)
    node_argv = (spec.launch.python, "-m", "hpcft", "node", run)
    lead = warning_lead(spec, save_seconds) if spec.run.requeue else None
    prepared = backends.get(spec.launch.backend).load().prepare(spec, run, node_argv, lead)
    files.update(prepared.files)
    cluster = prepared.preview_cluster
    inside = spec.launch.container.python if spec.launch.container.enabled else spec.launch.python
    # as hpcft node builds it on the first start: torchrun's restarts (and with them an elastic world)
    restarts = in_job_restarts(spec, spec.resources.nodes, 0) if cluster.in_slurm else None
    torchrun = restarts.count if restarts and restarts.by == "torchrun" else 0
    ctx = LaunchContext(spec, cluster, run, inside, cluster.master_host, restarts=torchrun)
    rdzv = {
        "nodes": str(spec.resources.nodes),
        "processes per node": str(ctx.procs_per_node),
        "world size": str(ctx.procs_per_node * spec.resources.nodes),
        "master": "first node of the allocation" if cluster.in_slurm else "127.0.0.1",
        "port": f"{master_port('JOBID', {})}+(JOBID mod 10000), or $MASTER_PORT",
        "node rank": "SLURM_NODEID" if cluster.in_slurm else "0",
    }
    return Plan(spec, run, files, prepared.submit_argv, build_launch(ctx), rdzv)


def deepspeed_files(spec: JobSpec, run_dir: str) -> dict[str, str]:
    """``{"ds_config.json": text}`` when the job uses DeepSpeed (reads and checks the user's JSON if given)."""
    user = None
    if spec.train.deepspeed_config:
        user = deepspeed.read_user_config(spec.train.deepspeed_config)
        problems = deepspeed.check_user_config(spec, user, spec.train.deepspeed_config)
        if problems:
            raise ConfigError(problems)
    devices = deepspeed.config_offload_devices_of_spec(spec, user)
    numels = model_numels(spec) if devices != ("none", "none") else None
    config = deepspeed.deepspeed_config(spec, user, run_dir, numels if devices[1] == "nvme" else None)
    problems = []
    if config and numels:
        problems += memory.host_fit_problems(spec, config.get("zero_optimization") or {}, numels)
    if config and user is not None:
        source = f"train.deepspeed_config ({spec.train.deepspeed_config})"
        problems += deepspeed.check_swap_buffers(config, numels, spec.ranks, spec.train.precision,
                                                 source)  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return {DS_CONFIG_FILE: json.dumps(config, indent=2) + "\n"} if config else {}


def model_numels(spec: JobSpec) -> list[int] | None:
    """The job's parameter tensor sizes from its ``config.json``; None for a user script or another architecture."""
    if not spec.train.model:
        return None
    try:
        return memory.parameter_numels(memory.read_model_config(spec.train.model))
    except ConfigError:
        return None
