"""One protocol for publishing a directory on the shared filesystem: manifest, marker last, rename.

Used for checkpoints (``rundir.checkpoints``) and for the tokenized-data cache (``train.data.cache``).
The writer fills a staging directory, then ``publish`` lists it into ``MANIFEST.json`` (every file
and its size, plus the caller's fields), writes the ``COMPLETE`` marker last, fsyncs both and
renames the staging directory to its final name in one atomic step. A reader on any node therefore
sees either no directory or a whole one, and after a crash of the machine every file the manifest
lists is on disk (each is fsynced before the marker is written); ``problem`` says why a directory is not (or no longer)
complete: no marker, an unreadable manifest, a file missing or of another size.
No torch here; nothing else in hpcft writes markers into published directories.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
MARKER = "COMPLETE"


def list_files(directory: Path) -> dict[str, int]:
    """Every regular file below ``directory`` → its size (relative POSIX paths)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            p = Path(root) / name
            out[p.relative_to(directory).as_posix()] = p.stat().st_size
    return out


def publish(staged: Path, target: Path, fields: dict[str, Any], *, replace: bool) -> bool:
    """Seal ``staged`` (manifest, then marker) and rename it to ``target``; True if ours is published.

    With ``replace`` an existing ``target`` is removed first (a re-save of the same checkpoint step);
    without it an existing complete ``target`` wins (another job published the same cache entry
    first: ``staged`` is discarded and False returned), and an incomplete leftover is replaced.
    """
    manifest = {**fields, "files": list_files(staged)}
    sync_tree(staged)  # the data on disk before the marker says it is
    write_synced(staged / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    write_synced(staged / MARKER, f"{fields.get('step', '')}\n")
    if target.exists() and (replace or problem(target) is not None):
        shutil.rmtree(target)
    try:
        os.replace(staged, target)
    except OSError:
        if replace or not (target / MARKER).is_file():
            raise
        shutil.rmtree(staged, ignore_errors=True)
        return False
    fsync_dir(target.parent)
    return True


def problem(path: Path) -> str | None:
    """Why ``path`` is not a complete published directory, or None if it is."""
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker (the save did not finish)"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, int] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST}: {e}"
    if not isinstance(files, dict) or not all(isinstance(n, int) and not isinstance(n, bool) for n in files.values()):
        return f"damaged {MANIFEST}: 'files' is not a mapping of file names to sizes"
    for rel, size in files.items():
        p = path / rel
        if not p.is_file():
            return f"file missing: {rel}"
        if p.stat().st_size != size:
            return f"file {rel} has {p.stat().st_size} bytes, the manifest says {size}"
    return None


def is_sealed(path: Path) -> bool:
    """True when ``path`` carries the marker (a quick look; ``problem`` checks the files too)."""
    return (path / MARKER).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a published directory."""
    return json.loads((path / MANIFEST).read_text())


def sync_tree(directory: Path) -> None:
    """fsync every file and folder below ``directory`` (a crash after the marker must not lose data)."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def write_synced(path: Path, text: str) -> None:
    """Write ``text`` and fsync it before returning."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
