"""The cluster tier: every test here runs on its module's cluster of the SLURM lab (``lab`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _on_the_modules_cluster(lab) -> None:
    """SLURM_CONF names the module's cluster before any test or fixture of the module talks to SLURM."""


# One uninterrupted 2-node ZeRO-2 run of 30 steps (one rank per node, constant learning rate, a save every
# 10 steps), shared by the tests that compare a resized run with it (test_shrink, test_resize): a shorter
# run's losses are its first steps (the data order and a constant rate do not depend on train.max_steps).
ZERO2_REFERENCE_ARGS = ["--nodes", "2", "--gpus-per-node", "1", "--zero", "2", "-o", "train.lr_scheduler=constant",
                        "-o", "train.eval_steps=null", "-o", "train.save_steps=10",
                        "-o", "train.max_steps=30"]  # fmt: skip
_SHARED: dict[str, object] = {}


@pytest.fixture
def zero2_reference(lab, ds_ops, demo_dir, tmp_path_factory):
    """The shared ZeRO-2 reference run's directory, made once per lane (a lane runs on one cluster)."""
    from tests.conftest import hpcft

    key = f"zero2-{lab.name}"
    if key not in _SHARED:
        runs = tmp_path_factory.mktemp("zero2-reference")
        hpcft("submit", str(demo_dir / "job.yaml"), *ZERO2_REFERENCE_ARGS, "--runs-dir", str(runs), "--wait",
              timeout=600)  # fmt: skip
        (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
        assert (run / "FINISHED").exists()
        _SHARED[key] = run
    return _SHARED[key]
