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
from types import MappingProxyType
from typing import TYPE_CHECKING

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

    def entry_argv(self) -> tuple[str, ...]:
        """What every rank runs: the user's script with its args, or the hpcft trainer."""
        if self.spec.launch.script:
            return (self.spec.launch.script, *self.spec.launch.script_args)
        return ("-m", "hpcft.train.main", self.run_dir)

    def rank_env(self) -> dict[str, str]:
        """Environment every rank gets: the rendezvous as torchrun-style and LLaMA-Factory-style names."""
        env = {
            "HPCFT_RUN_DIR": self.run_dir,
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
        env.update(self.spec.launch.env)
        return env


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
        needs: what ``hpcft node`` checks on the node first: ``("module", name)`` or ``("program", name)``.
        module: the module whose ``build`` makes the command.
        transport: the deepspeed runner's transport (``nossh``, ``pdsh``, ``openmpi``, ``mvapich``).
    """

    name: str
    shape: str
    needs: tuple[str, str]
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
