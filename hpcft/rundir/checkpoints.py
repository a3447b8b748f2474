"""Checkpoints on the shared filesystem: commit, find, verify, rotate; no torch here.

A checkpoint is written into a staging directory by every rank. After a barrier, rank 0 publishes
it with ``rundir.publish`` (the one protocol, shared with the data cache): ``MANIFEST.json`` (files
and sizes, step, world size, ZeRO stage, hpcft version), the ``COMPLETE`` marker last, and one
atomic rename to ``checkpoint-N``.
A reader trusts a checkpoint only if the marker is there and every file of the manifest exists
with its size; anything else (a crash mid-save, a full disk, a truncated file) is skipped with a
warning that names it. Rotation keeps the newest N complete checkpoints and runs only after a commit.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcft import __version__
from hpcft.rundir import publish
from hpcft.rundir.layout import CHECKPOINTS_DIR

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STAGING = ".staging"
MANIFEST = publish.MANIFEST
MARKER = publish.MARKER


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory and what its manifest says."""

    path: Path
    step: int
    world_size: int | None
    zero_stage: int | None


def checkpoints_dir(spec: JobSpec, run: Path) -> Path:
    """Where a run's committed ``checkpoint-N`` directories live (``train.output`` or ``RUN/checkpoints``)."""
    return Path(spec.train.output) if spec.train.output else run / CHECKPOINTS_DIR


def step_of(path: Path) -> int | None:
    """``checkpoint-120`` → 120; None for other names."""
    name = path.name
    return int(name[len(PREFIX) :]) if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() else None


def commit(staged: Path, final_dir: Path, *, step: int, world_size: int, zero_stage: int) -> Path:
    """Publish ``staged`` as ``final_dir/checkpoint-N`` (manifest, marker last, rename); returns the new path.

    Called on rank 0 after every rank has written its part (a barrier). A re-save of the same step
    (e.g. a resumed run saving again) replaces the older copy.
    """
    fields = {"step": step, "world_size": world_size, "zero_stage": zero_stage, "hpcft_version": __version__,
              "time": time.time()}  # fmt: skip
    target = final_dir / f"{PREFIX}{step}"
    publish.publish(staged, target, fields, replace=True)
    return target


def problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None if it is (its manifest's step is its name's)."""
    why = publish.problem(path)
    if why is not None:
        return why
    step = publish.read_manifest(path).get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step != step_of(path):
        return f"damaged {publish.MANIFEST}: step {step!r} is not the {path.name} it is in"
    return None


def read_info(path: Path) -> CheckpointInfo:
    """Step, world size and ZeRO stage from a checkpoint's manifest."""
    manifest: dict[str, Any] = publish.read_manifest(path)
    return CheckpointInfo(path, manifest["step"], manifest.get("world_size"), manifest.get("zero_stage"))


def candidates(base: Path) -> list[Path]:
    """``checkpoint-N`` directories under ``base``, newest (highest N) first."""
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0, reverse=True)


def newest_complete(base: Path, *, warn: bool = True) -> CheckpointInfo | None:
    """The newest verified checkpoint (marker, manifest, every file at its size); newer damaged ones are skipped.

    Each skipped one is named in a warning unless ``warn`` is off (``hpcft status``, which only shows
    the newest complete one).
    """
    for path in candidates(base):
        why = problem(path)
        if why is None:
            return read_info(path)
        if warn:
            log.warning("skipping checkpoint %s: %s", path, why)
    return None


TRAINER_STATE = "trainer_state.json"  # transformers.Trainer writes it after the model and optimizer


def newest_resumable(base: Path) -> Path | None:
    """The newest checkpoint a trainer can continue from: hpcft-verified, or a user Trainer's own.

    A user's ``transformers.Trainer`` writes ``checkpoint-N`` without hpcft's manifest; it counts once
    its ``trainer_state.json`` exists (``Trainer._save_checkpoint`` writes it after model and optimizer).
    """
    verified = newest_complete(base, warn=False)
    own = [p for p in candidates(base) if not (p / publish.MARKER).exists() and (p / TRAINER_STATE).is_file()]
    found = [p for p in (verified.path if verified else None, own[0] if own else None) if p is not None]
    return max(found, key=lambda p: step_of(p) or 0) if found else None


ABANDONED = ".abandoned-after-"  # + the pinned step: the checkpoints past it that a resume left behind


def set_aside_after(base: Path, step: int) -> list[Path]:
    """Move every ``checkpoint-M`` with M > ``step`` into ``base/.abandoned-after-STEP/``; the moved paths.

    ``hpcft resume --checkpoint STEP`` starts a new branch at STEP. The old branch's newer checkpoints must
    stop being candidates at once — else rotation keeps them over the new branch's and the next requeue
    resumes from the old branch's newest — but they are the user's: kept, out of the way.
    """
    newer = [p for p in candidates(base) if (step_of(p) or 0) > step]
    if not newer:
        return []
    aside = base / f"{ABANDONED}{step}"
    aside.mkdir(exist_ok=True)
    moved = []
    for path in newer:
        target = aside / path.name
        if target.exists():  # set aside before, by an earlier pin at the same step
            shutil.rmtree(target)
        path.rename(target)
        moved.append(target)
    return moved


def rotate(base: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` verified checkpoints.

    Only checkpoints that pass ``problem`` count: a marked but damaged newer one (a truncated file)
    neither counts towards ``keep`` nor is deleted, so the good ones it would replace stay.
    """
    if not keep:
        return []
    complete = [p for p in candidates(base) if problem(p) is None]
    doomed = complete[keep:]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
