"""Cluster tier: the data preparation job (`hpcft prepare`, `submit --prepare`) on the lab's `low` partition.

Expectations from SLURM itself (sacct: partition, start and end times) and from the ranks' own logs (cache
hit or miss), not from hpcft's account of them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from hpcft.ops.logs import rank_text
from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster


def sacct(job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State,Partition,Start,End"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    state, partition, start, end = out[0].split("|") if out else ("", "", "", "")
    return {"state": state, "partition": partition, "start": start, "end": end}


def cache_lines(run) -> str:
    return "\n".join(line for r in range(4) for line in rank_text(run, r).splitlines() if "data cache" in line)


def test_submit_prepare_runs_the_data_job_first_and_training_hits_the_cache(lab, demo_dir, runs_dir):
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--prepare", "--prepare-partition", "low",
                "-o", "train.max_steps=4", "--runs-dir", str(runs_dir), "--wait", timeout=600)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    prep = json.loads((run / "state.json").read_text())["prepare_job"]
    job = json.loads((run / "state.json").read_text())["jobs"][-1]["id"]
    assert f"data preparation of {run.name} as job {prep}" in out.stdout
    p, t = sacct(prep), sacct(job)
    assert p["state"] == "COMPLETED" and p["partition"] == "low" and t["state"] == "COMPLETED"
    assert t["start"] >= p["end"], (p, t)  # afterok: training began only once preparation had ended
    prepared = next((run / "logs").glob(f"prepare-{prep}.out")).read_text()
    assert "data cache miss" in prepared and "data ready in" in prepared
    lines = cache_lines(run)
    assert "data cache hit" in lines and "miss" not in lines, lines


def test_prepare_alone_then_submit_finds_the_cache(lab, demo_dir, runs_dir):
    out = hpcft("prepare", str(demo_dir / "job.yaml"), "--partition", "low", "--cpus", "1", "--runs-dir",
                str(runs_dir)).stdout  # fmt: skip
    job = out.split(" as job ")[1].split(";")[0]
    wait_until("the prepare job to end", lambda: sacct(job)["state"] in ("COMPLETED", "FAILED", "CANCELLED"))
    assert sacct(job)["state"] == "COMPLETED" and not [p for p in runs_dir.glob("*/spec.yaml")]  # no run listed
    hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "-o", "train.max_steps=4", "--runs-dir",
          str(runs_dir), "--wait", timeout=600)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    lines = cache_lines(run)
    assert "data cache hit" in lines and "miss" not in lines, lines


def test_prepare_needs_slurm_and_hpcfts_trainer(demo_dir, runs_dir):
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--backend", "local", "--prepare", "--runs-dir",
                str(runs_dir), check=False)  # fmt: skip
    assert out.returncode == 1 and "needs SLURM" in out.stderr and not list(runs_dir.iterdir())
