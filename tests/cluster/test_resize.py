"""Cluster tier: a ZeRO run resumed on another number of nodes (2 → 1 → 2) through `hpcft resume --nodes`.

The ZeRO shards of 2 ranks cannot load into 1: hpcft converts the checkpoint to DeepSpeed's universal
format on the ranks and keeps the global batch (train.grad_accum 1 → 2 → 1), so each step sees the same
samples as an uninterrupted 2-node run. Expectation: that run's losses. The two differ only in how a
step's gradient is summed (an all-reduce of 2 ranks, or 2 accumulated micro-batches on one rank), which
rounds at the 1e-7 level in fp32; 1e-5 over 20 steps leaves room for that and is 300 times below what
DeepSpeed's ZeRO-3 universal load does without hpcft's fix (3.6e-3 by step 20: the optimizer's step
counter counted twice per step). Constant learning rate: each resume raises train.max_steps.
"""

from __future__ import annotations

import json

import pytest

from tests.cluster.test_launchers import losses
from tests.conftest import hpcft

pytestmark = pytest.mark.cluster

SAME = ["--gpus-per-node", "1", "-o", "train.lr_scheduler=constant", "-o", "train.eval_steps=null",
        "-o", "train.save_steps=10"]  # fmt: skip


def submit(demo_dir, runs_dir, zero: int, steps: int) -> str:
    hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--zero", str(zero), *SAME, "-o",
          f"train.max_steps={steps}", "--runs-dir", str(runs_dir), "--wait", timeout=600)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    return run


def resume(run, nodes: int, steps: int) -> str:
    out = hpcft("resume", str(run), "--nodes", str(nodes), "-o", f"train.max_steps={steps}", "--wait", timeout=600)
    return out.stderr


@pytest.mark.parametrize("zero, sizes", [(3, [1, 2]), (2, [1])])
def test_zero_run_resumes_on_another_node_count(lab, ds_ops, demo_dir, tmp_path, zero, sizes, request):
    steps = 10 * (len(sizes) + 1)
    if zero == 2:  # the ZeRO-2 reference test_shrink uses too: its first steps (tests/cluster/conftest.py)
        reference = losses(request.getfixturevalue("zero2_reference"))[:steps]
    else:
        reference = losses(submit(demo_dir, tmp_path / "ref", zero, steps))
    run = submit(demo_dir, tmp_path / "runs", zero, 10)
    notes = [resume(run, nodes, 10 * (i + 2)) for i, nodes in enumerate(sizes)]
    assert "2 → 1 ranks: train.grad_accum 1 → 2 keeps the global batch at 8" in notes[0]
    begins = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x]
    assert [b["world_size"] for b in begins] == [2, *sizes]
    assert [b["start_step"] for b in begins] == [0, 10, 20][: len(sizes) + 1]
    assert (run / "checkpoints" / "checkpoint-10" / "latest_universal").read_text().strip() == "global_step10_universal"
    got = losses(run)
    assert len(got) == len(reference) == steps
    assert got == pytest.approx(reference, abs=1e-5)
