"""The planning pipeline, once for every command: layers → JobSpec → ``--zero auto`` → backend → Plan.

``submit``, ``plan``, ``resume`` and ``doctor`` all call ``plan_job``; the only probe on the way is
whether ``sbatch`` is on PATH (for ``backend: auto``), plus the existence of the job's input files.
The steps, in order:

1. the spec from its layers (``spec.layering``: defaults < profile < job YAML < ``-o`` < flags), or
   from a run's resolved spec with ``-o``/flags on top (resume);
2. ``--zero auto``: the memory planner picks stage and offload, the layers are applied again with
   that choice as flags (so the precedence stays the one rule);
3. ``backend: auto`` → sbatch where sbatch is on PATH, else local;
4. the caller's ``refine`` (resume's checkpoint checks, the doctor's probe script), then the input
   files are checked; 5. ``make_plan``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from types import MappingProxyType
from typing import Any

from hpcft.plan import memory
from hpcft.plan.plan import Plan, make_plan, resolve_backend, run_dir_name
from hpcft.slurm import client
from hpcft.spec import JobSpec, build_spec, layering


@dataclass(frozen=True)
class Request:
    """What a command asks to plan.

    Attributes:
        job_file: the job YAML (None: defaults only, e.g. a user script job).
        profile: a cluster profile YAML, below the job file.
        overrides: ``-o key=value`` strings.
        flags: dotted keys set by explicit CLI flags (None values are unset).
        base: a run's resolved spec as a mapping (resume): it replaces defaults, profile and job file.
        base_source: where ``base`` came from, for error messages.
        zero_auto: ``--zero auto``: let the memory planner choose stage and offload.
        gpu_mem: GiB per GPU, for the memory planner.
        check_inputs: check that the job's model, data and script exist (the doctor's probe skips it).
    """

    job_file: str | None = None
    profile: str | None = None
    overrides: tuple[str, ...] = ()
    flags: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    base: Mapping[str, Any] | None = None
    base_source: str | None = None
    zero_auto: bool = False
    gpu_mem: float | None = None
    check_inputs: bool = True


@dataclass(frozen=True)
class Planned:
    """A plan and what the pipeline decided on the way (e.g. ``--zero auto → ZeRO-3 …``)."""

    plan: Plan
    notes: tuple[str, ...] = ()


def load_spec(req: Request) -> JobSpec:
    """Step 1: the validated spec of the request's layers."""
    if req.base is None:
        return layering.load_job(req.job_file, profile=req.profile, overrides=req.overrides, flags=req.flags)
    data = layering.merge(req.base, layering.parse_overrides(req.overrides))
    for dotted, value in req.flags.items():
        if value is not None:
            layering.set_dotted(data, dotted, value)
    return build_spec(data, source=req.base_source)


def resolve(req: Request) -> tuple[JobSpec, tuple[str, ...]]:
    """Steps 1–3: the spec with ``--zero auto`` and ``backend: auto`` decided, and notes on the choices."""
    spec, notes = load_spec(req), ()
    if req.zero_auto:
        flags, reason = memory.auto_flags(spec, req.flags, req.gpu_mem)
        spec, notes = load_spec(dataclasses.replace(req, flags=flags)), (f"--zero auto → {reason}",)
    return resolve_backend(spec, client.sbatch_available()), notes


def new_run_dir(spec: JobSpec, now: datetime) -> str:
    """``RUNS_DIR/NAME-TIMESTAMP`` for a new run."""
    return str(PurePath(spec.run.runs_dir) / run_dir_name(spec.run.name, now))


def plan_job(
    req: Request,
    *,
    python: str,
    now: datetime,
    run_dir: str | None = None,
    save_seconds: float | None = None,
    refine: Callable[[JobSpec, str], JobSpec] | None = None,
) -> Planned:
    """The whole pipeline: the plan of ``req`` (in ``run_dir``, or a new run directory).

    ``refine(spec, run_dir)`` may check or adjust the resolved spec before the inputs are checked.
    """
    spec, notes = resolve(req)
    run = run_dir or new_run_dir(spec, now)
    if refine is not None:
        spec = refine(spec, run)
    if req.check_inputs:
        layering.check_inputs(spec)
    plan = make_plan(spec, python=python, now=now, run_dir=run, save_seconds=save_seconds)
    return Planned(plan, notes)
