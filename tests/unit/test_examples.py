"""Every file under configs/ loads, and every example job plans with the exact line it opens with."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpcft import cli
from hpcft.spec import layering as config

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"
JOBS = sorted(p for p in CONFIGS.glob("*.yaml") if p.read_text().startswith("# hpcft submit"))


def test_there_are_examples():
    assert len(JOBS) >= 3


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_example_job_plans_with_its_own_submit_line(job, tmp_path, monkeypatch):
    argv = shlex.split(job.read_text().splitlines()[0].lstrip("# "))
    assert argv[:3] == ["hpcft", "submit", f"configs/{job.name}"]
    monkeypatch.chdir(CONFIGS.parent)
    # The example's model and data live on a cluster; everything else is checked for real.
    monkeypatch.setattr(config, "check_inputs", lambda spec: None)
    args = ["plan", *argv[2:], "--backend", "sbatch", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "#SBATCH --nodes=" in result.output


@pytest.mark.parametrize("profile", sorted((CONFIGS / "clusters").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_profiles_layer_under_a_job(profile, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"launch": {"command": ["/x.py"]}}))
    spec = config.load_job(job, profile=profile)
    assert spec.resources.gpus_per_node > 0


def test_accelerate_and_deepspeed_examples_parse():
    acc = yaml.safe_load((CONFIGS / "accelerate-multi-gpu.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_machines"] == 2
    ds = json.loads((CONFIGS / "deepspeed-zero3.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3


def test_the_workstation_clusters_example_parses():
    from hpcft.remote import clusters

    config = clusters.parse((CONFIGS / "workstation-clusters.yaml").read_text(), "workstation-clusters.yaml")
    assert config.default == "mycluster" and config.clusters["mycluster"].runs_dir.startswith("/")
