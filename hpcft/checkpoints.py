"""The checkpoint commit protocol on the shared filesystem; no torch here.

A checkpoint is written into a staging directory by every rank. After a barrier, rank 0 lists it
into ``MANIFEST.json`` (files and sizes, step, world size, ZeRO stage, hpcft version), writes the
``COMPLETE`` marker last, and renames the directory to ``checkpoint-N`` in one atomic step.
A reader trusts a checkpoint only if the marker is there and every file of the manifest exists
with its size; anything else (a crash mid-save, a full disk, a truncated file) is skipped with a
warning that names it. Rotation keeps the newest N complete checkpoints and runs only after a commit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcft import __version__
from hpcft.spec import JobSpec

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STAGING = ".staging"
MANIFEST = "MANIFEST.json"
MARKER = "COMPLETE"


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory and what its manifest says."""

    path: Path
    step: int
    world_size: int | None
    zero_stage: int | None


def checkpoints_dir(spec: JobSpec, run: Path) -> Path:
    """Where a run's committed ``checkpoint-N`` directories live (``train.output`` or ``RUN/checkpoints``)."""
    return Path(spec.train.output) if spec.train.output else run / "checkpoints"


def step_of(path: Path) -> int | None:
    """``checkpoint-120`` → 120; None for other names."""
    name = path.name
    return int(name[len(PREFIX) :]) if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() else None


def list_files(directory: Path) -> dict[str, int]:
    """Every regular file below ``directory`` → its size (relative POSIX paths)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            p = Path(root) / name
            out[p.relative_to(directory).as_posix()] = p.stat().st_size
    return out


def commit(staged: Path, final_dir: Path, *, step: int, world_size: int, zero_stage: int) -> Path:
    """Write manifest then marker into ``staged``, fsync, and rename it to ``final_dir/checkpoint-N``.

    Called on rank 0 after every rank has written its part (a barrier). Returns the new path.
    """
    files = list_files(staged)
    manifest = {"step": step, "world_size": world_size, "zero_stage": zero_stage, "hpcft_version": __version__,
                "time": time.time(), "files": files}  # fmt: skip
    _write_synced(staged / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    _write_synced(staged / MARKER, f"{step}\n")
    target = final_dir / f"{PREFIX}{step}"
    if target.exists():  # a re-save of the same step (e.g. a resumed run saving again)
        shutil.rmtree(target)
    os.replace(staged, target)
    _fsync_dir(final_dir)
    return target


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None if it is."""
    if not (path / MARKER).is_file():
        return "no COMPLETE marker (the save did not finish)"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, int] = manifest["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable {MANIFEST}: {e}"
    for rel, size in files.items():
        p = path / rel
        if not p.is_file():
            return f"file missing: {rel}"
        if p.stat().st_size != size:
            return f"file {rel} has {p.stat().st_size} bytes, the manifest says {size}"
    return None


def read_info(path: Path) -> CheckpointInfo:
    """Step, world size and ZeRO stage from a checkpoint's manifest."""
    manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    return CheckpointInfo(path, manifest["step"], manifest.get("world_size"), manifest.get("zero_stage"))


def candidates(base: Path) -> list[Path]:
    """``checkpoint-N`` directories under ``base``, newest (highest N) first."""
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0, reverse=True)


def newest_complete(base: Path, *, validate: bool = True) -> CheckpointInfo | None:
    """The newest complete checkpoint; incomplete or damaged newer ones are skipped with a warning.

    With ``validate=False`` (a quick look, e.g. for ``hpcft status``) only the marker is checked and
    nothing is logged.
    """
    for path in candidates(base):
        if not validate:
            if (path / MARKER).is_file():
                return read_info(path)
            continue
        why = problem(path)
        if why is None:
            return read_info(path)
        log.warning("skipping checkpoint %s: %s", path, why)
    return None


def rotate(base: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (never an incomplete newer one's fallback)."""
    if not keep:
        return []
    complete = [p for p in candidates(base) if (p / MARKER).is_file()]
    doomed = complete[keep:]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
