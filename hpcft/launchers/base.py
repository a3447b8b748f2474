"""The launcher registry and the types every launcher shares.

A launcher is one line in ``LAUNCHERS`` — name, shape, what it needs on the node, the module
whose ``build(ctx) -> LaunchCommand`` decides its command — plus that module. ``build`` is a pure
function of the resolved spec and the node's ``ClusterEnv``: it writes no files and probes no
tools; ``hpcft node`` checks the needs, writes the files and execs the argv. Launcher modules are
imported on first use, so reading the registry (the spec's choices, ``--help``) loads none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import TYPE_CHECKING

from hpcft.launchers.command import command_kind, placeholders_in
from hpcft.rundir.checkpoints import checkpoints_dir
from hpcft.rundir.layout import ACCELERATE_CONFIG_FILE, DS_CONFIG_FILE, node_accelerate_config

if TYPE_CHECKING:
    from hpcft.slurm.env import ClusterEnv
    from hpcft.spec import JobSpec


@dataclass(frozen=True)
class LaunchCommand:
    """What a node executes: the argv, extra environment, and files to write first (path → text)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Entry:
    """What every rank runs: hpcft's trainer or the user's ``launch.command``, placeholders filled in.

    ``kind`` is ``module`` (``-m target``), ``script`` (a ``.py`` file) or ``program`` (any executable).
    """

    kind: str
    target: str
    args: tuple[str, ...]

    def argv(self, python: str) -> tuple[str, ...]:
        """The command as a process runs it directly (no launcher between)."""
        if self.kind == "module":
            return (python, "-u", "-m", self.target, *self.args)
        if self.kind == "script":
            return (python, "-u", self.target, *self.args)
        return (self.target, *self.args)

    def launcher_args(self, module_flag: str, no_python_flag: str) -> tuple[str, ...]:
        """The command as a launcher that prepends python takes it (its flags for modules and programs)."""
        if self.kind == "module":
            return (module_flag, self.target, *self.args)
        if self.kind == "program":
            return (no_python_flag, self.target, *self.args)
        return (self.target, *self.args)


@dataclass(frozen=True)
class LaunchContext:
    """Inputs every launcher gets: the spec, this node's view of the allocation, the run dir."""

    spec: JobSpec
    cluster: ClusterEnv
    run_dir: str
    python: str
    master_addr: str
    network: str | None = None  # interface or CIDR for MPI's TCP transport (deepspeed-openmpi)
    node_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # this node's environment
    restarts: int = 0  # in-job restarts torchrun may do itself (``plan.requeue.in_job_restarts``)
    node_has_gpu: bool = True  # an NVIDIA driver is loaded on this node (``hpcft node`` checks)
    resume_checkpoint: str = ""  # newest complete checkpoint of the output directory (``hpcft node`` finds it)

    @property
    def procs_per_node(self) -> int:
        """Worker processes on this node: SLURM's GPU count, else the spec's, else one (CPU)."""
        if self.cluster.gpus_on_node:
            return self.cluster.gpus_on_node
        return self.spec.resources.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        return self.procs_per_node * self.cluster.num_nodes

    def placeholders(self) -> dict[str, str]:
        """The values of ``launch.command``'s placeholders on this node (``hpcft.launchers.command``)."""
        launcher = self.spec.launch.launcher
        own = ACCELERATE_CONFIG_FILE if launcher == "accelerate" else node_accelerate_config(self.cluster.node_rank)
        config = self.spec.launch.accelerate_config or f"{self.run_dir}/{own}"
        zero = self.spec.train.uses_deepspeed
        return {
            "run_dir": self.run_dir,
            "ds_config": f"{self.run_dir}/{DS_CONFIG_FILE}" if zero else "",
            "accelerate_config": config if launcher in ("accelerate", "none") else "",
            "output_dir": str(checkpoints_dir(self.spec, PurePath(self.run_dir))),
            "resume_checkpoint": self.resume_checkpoint,
            "node_rank": str(self.cluster.node_rank),
            "nnodes": str(self.cluster.num_nodes),
        }

    def used_placeholders(self) -> set[str]:
        """The placeholders ``launch.command`` names."""
        return {name for arg in self.spec.launch.command[1:] for name in placeholders_in(arg)}

    def entry(self) -> Entry:
        """What every rank runs: the user's command through ``hpcft.node.rank_exec``, or the hpcft trainer."""
        command = self.spec.launch.command
        kind = command_kind(command)
        if kind == "hpcft":
            return Entry("module", "hpcft.train.main", (self.run_dir,))
        target, args = (command[1], command[2:]) if kind == "module" else (command[0], command[1:])
        # Each rank fills the placeholders in at each (re)start, {resume_checkpoint} read then (rank_exec).
        return Entry("module", RANK_EXEC, (kind, target, *args))

    def rank_env(self) -> dict[str, str]:
        """Environment every rank gets: the rendezvous as torchrun-style and LLaMA-Factory-style names.

        Also the placeholders' values as ``HPCFT_<NAME>``, and for a user's command on a node without
        GPUs and without DeepSpeed ``ACCELERATE_USE_CPU=true``: accelerate and the HF Trainer then form
        one gloo world of every rank (``accelerate launch`` with ``use_cpu`` would start a single
        process: its simple launcher).
        """
        env = {
            # the placeholders' values; a config the job does not have is left out
            **{f"HPCFT_{k.upper()}": v for k, v in self.placeholders().items() if v or k == "resume_checkpoint"},
            # Ranks started over ssh (pdsh) see no SLURM_* variables: pass what the trainer records.
            "HPCFT_JOB_ID": self.cluster.job_id or "local",
            "HPCFT_RESTART_COUNT": str(self.cluster.restart_count),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.cluster.master_port),
            "NNODES": str(self.cluster.num_nodes),
            "NODE_RANK": str(self.cluster.node_rank),
            "NPROC_PER_NODE": str(self.procs_per_node),
            "FORCE_TORCHRUN": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        if not self.node_has_gpu and self.spec.launch.command and not self.spec.train.uses_deepspeed:
            # Not with DeepSpeed: accelerate drops DeepSpeed when told CPU (state.py: "... and not cpu"),
            # and a Trainer with use_cpu + --deepspeed (hpcft's own, a user's) forms its CPU world itself.
            env["ACCELERATE_USE_CPU"] = "true"
        if self.spec.launch.command and self.spec.launch.hf_integration:
            # The user's transformers.Trainer reports, checkpoints and resumes like hpcft's (hf_integration).
            path = self.node_env.get("PYTHONPATH")
            env.update(HPCFT_HF_INTEGRATION="1", HPCFT_WORLD_SIZE=str(self.world_size),
                       PYTHONPATH=f"{SITE_DIR}:{path}" if path else SITE_DIR)  # fmt: skip
        env.update(self.spec.launch.env)
        return env


RANK_EXEC = "hpcft.node.rank_exec"  # starts a user's command in a rank (placeholders, resume point, start count)

# Holds the sitecustomize that installs hpcft.train.hf_integration in a user command's ranks.
SITE_DIR = str(Path(__file__).resolve().parent.parent / "train" / "site")

# How the batch script starts hpcft on the allocation, per launcher:
#   per_node:  srun, one task per node, each runs `hpcft node` which starts that node's launcher;
#   head_node: the batch script runs `hpcft node` once on the first node; the launcher reaches the
#              other nodes itself (pdsh over ssh, mpirun through SLURM);
#   per_rank:  srun, one task per GPU (per process on CPU); each task is a rank, no launcher.
SHAPES = ("per_node", "head_node", "per_rank")


@dataclass(frozen=True)
class Launcher:
    """A registered launcher.

    Attributes:
        name: the value of ``launch.launcher`` / ``--launcher``.
        shape: ``per_node``, ``head_node`` or ``per_rank`` (see ``SHAPES``).
        needs: what ``hpcft node`` checks on the node first: ``("module", name)`` or ``("program", name)``;
            None: nothing (``none`` starts the command itself).
        module: the module whose ``build`` makes the command.
        transport: the deepspeed runner's transport (``nossh``, ``pdsh``, ``openmpi``, ``mvapich``).
    """

    name: str
    shape: str
    needs: tuple[str, str] | None
    module: str
    transport: str | None = None

    def build(self, ctx: LaunchContext) -> LaunchCommand:
        """This node's command (imports the launcher's module on first use)."""
        return importlib.import_module(self.module).build(ctx)


_DS = "hpcft.launchers.deepspeed"
LAUNCHERS: Mapping[str, Launcher] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            Launcher("torchrun", "per_node", ("module", "torch"), "hpcft.launchers.torchrun"),
            Launcher("deepspeed", "per_node", ("module", "deepspeed"), _DS, transport="nossh"),
            Launcher("deepspeed-pdsh", "head_node", ("program", "pdsh"), _DS, transport="pdsh"),
            Launcher("deepspeed-openmpi", "head_node", ("program", "mpirun"), _DS, transport="openmpi"),
            Launcher("deepspeed-mvapich", "head_node", ("program", "mpiname"), _DS, transport="mvapich"),
            Launcher("accelerate", "per_node", ("module", "accelerate"), "hpcft.launchers.accelerate"),
            Launcher("srun", "per_rank", ("module", "torch"), "hpcft.launchers.srun"),
            Launcher("none", "per_node", None, "hpcft.launchers.none"),
        )
    }
)


def get(name: str) -> Launcher:
    """The launcher registered as ``name`` (the spec has already checked it is one)."""
    return LAUNCHERS[name]


def shape_of(launcher: str) -> str:
    """``per_node``, ``head_node`` or ``per_rank``."""
    return LAUNCHERS[launcher].shape


def hostfile_text(hosts: tuple[str, ...], slots: int) -> str:
    """A DeepSpeed/Open MPI hostfile: ``host slots=N`` per line (see hostfiles/README.md)."""
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def build_launch(ctx: LaunchContext) -> LaunchCommand:
    """The command of the launcher the spec names."""
    return get(ctx.spec.launch.launcher).build(ctx)
