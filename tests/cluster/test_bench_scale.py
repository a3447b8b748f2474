"""Cluster tier: `hpcft bench scale` on the lab, 1 → 2 nodes, as a user runs it."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.conftest import hpcft

pytestmark = pytest.mark.cluster


def test_bench_scale_prints_and_saves_the_table(lab, demo_dir, runs_dir, tmp_path):
    out = hpcft("bench", "scale", str(demo_dir / "job.yaml"), "--nodes", "1,2", "--steps", "12", "--warmup", "3",
                "--runs-dir", str(runs_dir), "--out", str(tmp_path / "report"), env={"COLUMNS": "200"},
                timeout=900)  # fmt: skip
    report = json.loads((tmp_path / "report" / "scale.json").read_text())
    points = report["points"]
    assert [(p["nodes"], p["world_size"]) for p in points] == [(1, 2), (2, 4)]
    # Independently of hpcft's code: each size's tokens/s is the median of its run's records after warm-up.
    for p in points:
        records = [json.loads(x) for x in (runs_dir / p["run"] / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in records if "loss" in r and r["step"] > 3]
        assert len(rates) == 9 and p["tokens_per_s"] == pytest.approx(statistics.median(rates))
        assert not list((runs_dir / p["run"] / "checkpoints").glob("checkpoint-*"))  # a benchmark saves none
    speedup = points[1]["tokens_per_s"] / points[0]["tokens_per_s"]
    assert points[1]["speedup"] == pytest.approx(speedup, abs=1e-3)
    assert points[1]["efficiency"] == pytest.approx(speedup / 2, abs=1e-3)
    exposed = max(0.0, points[1]["step_s"] - points[0]["step_s"])  # the same micro-batches per rank at both sizes
    assert points[1]["exposed_comm_s"] == pytest.approx(exposed, abs=1e-4) and points[0]["exposed_comm_s"] == 0
    # The lab's nodes are namespaces of one machine: the output says the figures are not the hardware's.
    assert "ran on one machine" in out.stdout and report["notes"] and "2 nodes" in report["notes"][0]
    assert "speed-up" in out.stdout and "efficiency" in out.stdout and "torchtitan" in out.stdout
    assert "exposed comm" in out.stdout
    assert (tmp_path / "report" / "scale.png").read_bytes()[:4] == b"\x89PNG"
