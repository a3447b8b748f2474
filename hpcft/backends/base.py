"""The backend registry: one line per backend, no backend code imported until it is used.

A backend module provides:

* ``prepare(spec, run, node_argv, signal_lead) -> Prepared`` — pure: the files it adds to the run
  directory, the submit argv ``hpcft plan`` shows, and the allocation as node 0 will see it;
* ``start(plan, run) -> job id`` — the effect: hand the written run directory to the machines;
* ``cancel(job)`` — stop one job recorded in state.json.

Adding a backend is its module plus one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcft.slurm.env import ClusterEnv


@dataclass(frozen=True)
class Backend:
    """A registered backend: its name, whether SLURM runs its jobs, and the module implementing it."""

    name: str
    uses_slurm: bool
    module: str

    def load(self) -> ModuleType:
        """The implementing module (imported on first use: submitit only where it is chosen)."""
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Prepared:
    """What a backend's ``prepare`` decides for a plan."""

    files: Mapping[str, str]
    submit_argv: tuple[str, ...]
    preview_cluster: ClusterEnv


BACKENDS: Mapping[str, Backend] = MappingProxyType(
    {
        b.name: b
        for b in (
            Backend("sbatch", uses_slurm=True, module="hpcft.backends.sbatch"),
            Backend("local", uses_slurm=False, module="hpcft.backends.local"),
            Backend("submitit", uses_slurm=True, module="hpcft.backends.submitit"),
        )
    }
)


def get(name: str) -> Backend:
    """The backend registered as ``name`` (the spec has already checked it is one)."""
    return BACKENDS[name]


def uses_slurm(name: str) -> bool:
    """True for backends whose jobs SLURM knows (squeue, sacct, scancel apply)."""
    backend = BACKENDS.get(name)
    return bool(backend and backend.uses_slurm)
