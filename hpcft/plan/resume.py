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

from hpcft.errors import RunError
from hpcft.plan.pipeline import Request, plan_job
from hpcft.plan.plan import Plan
from hpcft.rundir import checkpoints, store
from hpcft.rundir.layout import FINISHED_FILE, SPEC_FILE
from hpcft.spec import JobSpec, spec_to_dict


@dataclass(frozen=True)
class ResumePlan:
    """A resume, fully decided: the plan of the new job and the checkpoint it continues from."""

    plan: Plan
    checkpoint: checkpoints.CheckpointInfo | None
    explicit: bool


def plan_resume(run: Path, *, overrides: Iterable[str] = (), flags: Mapping[str, Any] | None = None,
                checkpoint: int | None = None, python: str, now: datetime) -> ResumePlan:  # fmt: skip
    """Everything ``hpcft resume`` will do; reads the run directory, writes nothing."""
    old = store.load_run_spec(run)
    req = Request(overrides=tuple(overrides), flags=dict(flags or {}), base=spec_to_dict(old),
                  base_source=str(run / SPEC_FILE), check_inputs=False)  # fmt: skip
    found: list[checkpoints.CheckpointInfo] = []

    def refine(spec: JobSpec, run_dir: str) -> JobSpec:
        if not spec.launch.command:  # hpcft's trainer; a user's own trainer finds its checkpoints itself
            found.append(_checkpoint(str(checkpoints.checkpoints_dir(spec, run)), checkpoint))
            _check_world(spec, found[0])
            _check_more_to_do(run, spec)
        return spec

    state = store.read_state(run)
    planned = plan_job(req, python=python, now=now, run_dir=str(run), save_seconds=state.get("last_save_seconds"),
                       refine=refine)  # fmt: skip
    return ResumePlan(planned.plan, found[0] if found else None, checkpoint is not None)


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
    marker = run / FINISHED_FILE
    if not marker.exists():
        return
    text = (store.read_text(marker) or "").strip()
    if not text.isdigit():
        return  # FINISHED without a step (written by hand, or damaged): the trainer knows where it stopped
    done = int(text)
    if 0 <= spec.train.max_steps <= done:
        raise RunError(
            f"{run.name} finished at step {done} and train.max_steps is {spec.train.max_steps}: nothing to resume",
            hint=f"train further with e.g. -o train.max_steps={done * 2}",
        )
