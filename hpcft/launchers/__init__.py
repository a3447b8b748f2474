"""Launchers: how one node starts its worker processes.

Each launcher module has ``build(ctx) -> LaunchCommand``, a pure function of the resolved spec and
the node's ``ClusterEnv``: it writes no files and probes no tools. ``hpcft node`` writes the files and
execs the argv.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


def build_launch(ctx: LaunchContext) -> LaunchCommand:
    """Dispatch to the launcher the spec names."""
    from hpcft.launchers import torchrun

    builders = {"torchrun": torchrun.build}
    return builders[ctx.spec.launch.launcher](ctx)
