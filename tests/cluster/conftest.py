"""The cluster tier: every test here runs on its module's cluster of the SLURM lab (``lab`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _on_the_modules_cluster(lab) -> None:
    """SLURM_CONF names the module's cluster before any test or fixture of the module talks to SLURM."""
