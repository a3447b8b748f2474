"""The sweep's grid and its job array script (hpcft.plan.sweep)."""

from __future__ import annotations

import subprocess

import pytest

from hpcft.errors import ConfigError
from hpcft.plan import sweep


def test_axes_and_points():
    fixed, axes = sweep.grid(["train.lr=1e-5,3e-5", "train.max_steps=100", "train.lora.r=8,16",
                              "train.lora.target_modules=[q_proj,v_proj]"])  # fmt: skip
    assert fixed == ("train.max_steps=100", "train.lora.target_modules=[q_proj,v_proj]")  # a list stays one value
    assert axes == [("train.lr", ["1e-5", "3e-5"]), ("train.lora.r", ["8", "16"])]
    assert sweep.points(axes) == [
        {"train.lr": "1e-5", "train.lora.r": "8"},
        {"train.lr": "1e-5", "train.lora.r": "16"},
        {"train.lr": "3e-5", "train.lora.r": "8"},
        {"train.lr": "3e-5", "train.lora.r": "16"},
    ]
    assert sweep.point_name("sft", {"train.lr": "1e-5", "train.lora.r": "8"}) == "sft-lr1e-5-r8"


@pytest.mark.parametrize("overrides, message", [
    (["train.max_steps=10"], "nothing to sweep"),
    (["resources.nodes=1,2"], "varies train.* values (not resources.nodes)"),
    (["train.lr=1e-5,1e-5"], "distinct and non-empty"),
    (["train.lr=1e-5,"], "distinct and non-empty"),
])  # fmt: skip
def test_what_cannot_be_swept_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        sweep.grid(overrides)


POINT0 = """#!/bin/bash
#SBATCH --chdir=/r/sft-lr1-x
#SBATCH --comment=hpcft:/r/sft-lr1-x
#SBATCH --job-name=sft-lr1
#SBATCH --nodes=2
#SBATCH --output=/r/sft-lr1-x/logs/slurm-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
echo body
"""


def test_array_script_keeps_the_shared_options_and_runs_the_points_script():
    text = sweep.sweep_script(POINT0, "/r/sft sweep", 4, 2, "sft")
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert lines == ['#SBATCH --array=0-3%2', '#SBATCH --chdir="/r/sft sweep"', "#SBATCH --job-name=sft-sweep",
                     "#SBATCH --nodes=2", '#SBATCH --output="/r/sft sweep/array-%A_%a.out"', "#SBATCH --requeue",
                     "#SBATCH --signal=B:USR1@180"]  # fmt: skip
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert 'exec bash "$RUN/job.sbatch" >> "$RUN/logs/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out"' in text


def test_a_refused_sweep_leaves_no_run_behind(tmp_path, monkeypatch):
    """sbatch refuses the array (a stand-in that refuses every submission): no point's directory stays."""
    import os

    import yaml

    from tests import fuzzing as F
    from tests.conftest import hpcft

    F.make_workdir(tmp_path)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(F.base_job()))
    env = {"PATH": f"{F.fake_slurm(tmp_path)}:{os.environ['PATH']}"}
    out = hpcft("sweep", "job.yaml", "--backend", "sbatch", "-o", "train.lr=1e-5,2e-5", "--runs-dir",
                str(tmp_path / "runs"), env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert list((tmp_path / "runs").iterdir()) == []
