"""Locate the data shipped with hpcft (sbatch templates, example configs).

In a wheel they live inside the package (``hpcft/sbatch_templates``, mapped at build time); in a
source checkout or editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory ``name`` (``sbatch_templates`` or ``configs``) wherever this install keeps it."""
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hpcft data folder {name!r} is missing from this installation ({_PKG})")
