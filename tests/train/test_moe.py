"""A tiny Mixtral (mixture-of-experts) model on 2 CPU ranks: router aux loss logged, ZeRO-3 with MoE leaf modules.

Independent expectations: the first logged aux loss is the untrained model's, recomputed here in
one process on the training data (Mixtral's load-balancing loss: 2 = top_k when perfectly balanced);
ZeRO-3 with the MoE block as a leaf module trains exactly like DDP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.test_zero import SHORT, losses, rank_log, records, submit

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def moe_demo(train_stack, tmp_path_factory) -> Path:
    from hpcft.train.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("moe") / "demo", moe=True)


@pytest.fixture(scope="module")
def moe_runs(ds_ops, moe_demo, tmp_path_factory) -> dict[int, Path]:
    runs = tmp_path_factory.mktemp("moe-runs")
    return {stage: submit(moe_demo, runs, "--zero", str(stage), *SHORT, name=f"z{stage}") for stage in (0, 3)}


def aux_losses(run: Path) -> list[float]:
    return [r["aux_loss"] for r in records(run) if "loss" in r]


def initial_aux_loss(demo: Path, batches: int = 25) -> float:
    """The untrained model's router aux loss, averaged over batches of 4 training samples (one process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpcft.train import data

    tok = AutoTokenizer.from_pretrained(demo.parent / "model")
    model = AutoModelForCausalLM.from_pretrained(demo.parent / "model").eval()
    rows = data.load_dataset(demo.parent / "data" / "train.jsonl", "alpaca", tok, seq_len=128)
    collate = data.make_collator(tok, packing=False)
    with torch.no_grad():
        values = [
            model(**collate([rows[j] for j in range(i, i + 4)])).aux_loss.item() for i in range(0, 4 * batches, 4)
        ]
    return sum(values) / len(values)


def test_router_aux_loss_is_logged_every_step(moe_runs, moe_demo):
    aux = aux_losses(moe_runs[3])
    assert len(aux) == 10 and all(1.9 < a < 4.0 for a in aux)  # 2 (= top_k) would be perfectly balanced
    # Step 1 runs the untrained model on 2 batches: its aux loss is that of any batch (spread ~0.015 here).
    assert aux[0] == pytest.approx(initial_aux_loss(moe_demo), abs=0.05)


def test_zero3_with_moe_leaf_modules_trains_like_ddp(moe_runs):
    assert "ZeRO-3 leaf modules: MixtralSparseMoeBlock" in rank_log(moe_runs[3])
    assert "ZeRO-3 leaf modules" not in rank_log(moe_runs[0])
    assert losses(moe_runs[3]) == pytest.approx(losses(moe_runs[0]), rel=1e-5)
    assert aux_losses(moe_runs[3]) == pytest.approx(aux_losses(moe_runs[0]), rel=1e-5)


def test_the_trained_moe_model_loads(moe_runs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(moe_runs[3] / "model")
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 4


def test_router_loss_can_be_switched_off(moe_demo):
    from hpcft.spec import build_spec
    from hpcft.train.model import load_config

    off = build_spec(
        {
            "train": {
                "model": str(moe_demo.parent / "model"),
                "data": {"train": "d"},
                "moe": {"router_aux_loss": False, "router_aux_loss_coef": 0.1},
            }
        }
    )
    config = load_config(off)
    assert config.output_router_logits is False and config.router_aux_loss_coef == 0.1
