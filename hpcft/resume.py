"""``hpcft resume RUN``: a new job that continues a run from its newest complete checkpoint.

Decides the resumed spec (the run's spec with ``-o`` overrides and flags on top), the checkpoint,
and refuses what would lose work silently: no complete checkpoint (a restart from step 0), a
world size that ZeRO shards cannot be loaded into, or a finished run without more steps to train.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpcft import checkpoints, config, runs
from hpcft.errors import RunError
from hpcft.plan import Plan, make_plan
from hpcft.spec import build_spec, spec_to_dict
from hpcft.train_files import RESUME_FROM_FILE, STOP_MARKERS


@dataclass(frozen=True)
class ResumePlan:
    """A resume, fully decided: the plan of the new job and the checkpoint it continues from."""

    plan: Plan
    checkpoint: checkpoints.CheckpointInfo | None
    explicit: bool


def plan_resume(run: Path, *, overrides: Iterable[str] = (), flags: Mapping[str, Any] | None = None,
                checkpoint: int | None = None, python: str, now: datetime) -> ResumePlan:  # fmt: skip
    """Everything ``hpcft resume`` will do; reads the run directory, writes nothing."""
    old = runs.load_run_spec(run)
    data = config.merge(spec_to_dict(old), config.parse_overrides(overrides))
    for dotted, value in (flags or {}).items():
        if value is not None:
            config.set_dotted(data, dotted, value)
    spec = build_spec(data, source=str(run / "spec.yaml"))
    info = None
    if spec.launch.script is None:
        info = _checkpoint(str(checkpoints.checkpoints_dir(spec, run)), checkpoint)
        _check_world(spec, info)
        _check_more_to_do(run, spec)
    state = runs.read_state(run)
    plan = make_plan(spec, python=python, now=now, run_dir=str(run), save_seconds=state.get("last_save_seconds"))
    return ResumePlan(plan, info, checkpoint is not None)


def _checkpoint(base: str, step: int | None) -> checkpoints.CheckpointInfo:
    if step is not None:
        path = Path(base) / f"{checkpoints.PREFIX}{step}"
        why = checkpoints.problem(path) if path.is_dir() else "no such checkpoint"
        if why:
            raise RunError(f"cannot resume from {path}: {why}", hint="`ls` the checkpoints directory; omit "
                           "--checkpoint to take the newest complete one")  # fmt: skip
        return checkpoints.read_info(path)
    info = checkpoints.newest_complete(Path(base))
    if info is None:
        raise RunError(
            f"no complete checkpoint under {base}: resuming would silently start again from step 0",
            hint="submit the job anew (`hpcft submit`) if that is what you want",
        )
    return info


def _check_world(spec, info: checkpoints.CheckpointInfo) -> None:
    world = spec.resources.nodes * (spec.resources.gpus_per_node or 1)
    if spec.train.zero > 0 and info.world_size not in (None, world):
        raise RunError(
            f"{info.path.name} holds ZeRO-{spec.train.zero} shards of {info.world_size} ranks; the resumed job "
            f"would have {world}. hpcft does not convert ZeRO shards between world sizes",
            hint=f"resume with {info.world_size} ranks (--nodes), or `hpcft export RUN --out DIR` "
            "and start a new run from DIR",
        )


def _check_more_to_do(run: Path, spec) -> None:
    marker = run / runs.FINISHED_FILE
    if not marker.exists():
        return
    done = int(marker.read_text().strip() or 0)
    if 0 <= spec.train.max_steps <= done:
        raise RunError(
            f"{run.name} finished at step {done} and train.max_steps is {spec.train.max_steps}: nothing to resume",
            hint=f"train further with e.g. -o train.max_steps={done * 2}",
        )


def apply_resume(rp: ResumePlan) -> str:
    """Clear the previous job's markers, pin the checkpoint if one was named, and submit; the job id."""
    from hpcft import backends

    run = Path(rp.plan.run_dir)
    for name in STOP_MARKERS:
        (run / name).unlink(missing_ok=True)
    pin = run / RESUME_FROM_FILE
    if rp.explicit and rp.checkpoint:
        runs.write_atomic(pin, rp.checkpoint.path.name + "\n")
    else:
        pin.unlink(missing_ok=True)
    runs.update_state(run, lambda s: s.update(cancelled=False, failures=0))
    return backends.resubmit(rp.plan)
