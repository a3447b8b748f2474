"""ZeRO-3 across both lab nodes through `hpcft submit` (sbatch), deepspeed and accelerate launchers, world size 4.

Independent checks: DDP over torchrun on the same allocation shape gives the same losses; the
DeepSpeed checkpoint holds four optimizer partitions, each a quarter of the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcft.ops.logs import rank_text
from tests.cluster.test_launchers import losses, run_demo
from tests.train.test_zero import optimizer_partition_numel

pytestmark = pytest.mark.cluster

SHORT = ["-o", "train.max_steps=10", "-o", "train.save_steps=10", "-o", "train.eval_steps=null"]


@pytest.fixture(scope="module")
def ddp_reference(lab, ds_ops, demo_dir, tmp_path_factory) -> list[float]:
    _, run = run_demo(demo_dir, tmp_path_factory.mktemp("ddp"), *SHORT)
    return losses(run)


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate"])
def test_zero3_on_two_nodes(ddp_reference, lab, demo_dir, runs_dir, launcher):
    st, run = run_demo(demo_dir, runs_dir, "--launcher", launcher, "--zero", "3", *SHORT)
    begin = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x)
    assert begin["world_size"] == 4 and st["step"] == 10
    hosts = {rank_text(run, r).split(" on ", 1)[1].split(":")[0] for r in range(4)}
    assert hosts == set(lab.nodes)
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["stage"] == 3
    parts = [optimizer_partition_numel(run / "checkpoints" / "checkpoint-10", r) for r in range(4)]
    numel = _numel(demo_dir / "model")
    assert sum(parts) >= numel and max(parts) <= numel / 4 + 64, (parts, numel)
    assert losses(run) == pytest.approx(ddp_reference, rel=1e-4)


def _numel(model: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
