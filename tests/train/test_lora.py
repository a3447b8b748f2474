"""LoRA (peft) under DDP and ZeRO-3 on 2 CPU ranks: the adapter is saved, loads with peft, merges, and agrees.

Independent expectations: LoRA's B matrices start at zero, so a non-zero B proves the adapters trained;
the merged model must reproduce the adapted model's logits; DDP and ZeRO-3 train the same adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcft.errors import ConfigError
from tests.train.test_zero import SHORT, losses, rank_log, submit

pytestmark = pytest.mark.train

LORA = ["-o", "train.lora.enabled=true", "-o", "train.lora.r=8", "-o", "train.lora.alpha=16"]
# dropout 0: DDP and ZeRO-3 must see the same arithmetic; checkpointing: LoRA with frozen embeddings.
LORA += ["-o", "train.lora.dropout=0", "-o", "train.gradient_checkpointing=true"]


@pytest.fixture(scope="module")
def lora_runs(ds_ops, demo_dir, tmp_path_factory) -> dict[int, Path]:
    runs = tmp_path_factory.mktemp("lora")
    return {
        stage: submit(demo_dir / "job.yaml", runs, "--zero", str(stage), *LORA, *SHORT, name=f"z{stage}")
        for stage in (0, 3)
    }


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "adapter_model.safetensors")


@pytest.mark.parametrize("stage", [0, 3])
def test_adapter_is_saved_and_trained(lora_runs, stage):
    run = lora_runs[stage]
    config = json.loads((run / "model" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"
    assert not (run / "model" / "model.safetensors").exists()  # only the adapter, not a full copy
    weights = adapter(run)
    # all-linear on the demo Llama: 2 layers x (q, k, v, o, gate, up, down), an A and a B each
    assert len(weights) == 2 * 7 * 2
    bs = [w for k, w in weights.items() if "lora_B" in k]
    assert len(bs) == 14 and all(w.abs().max() > 0 for w in bs), "a LoRA B matrix is still zero: it never trained"
    assert "LoRA r=8 alpha=16:" in rank_log(run)
    assert sum(losses(run)[-3:]) < sum(losses(run)[:3])


def test_ddp_and_zero3_train_the_same_adapter(lora_runs):
    import torch

    ddp, z3 = adapter(lora_runs[0]), adapter(lora_runs[3])
    assert ddp.keys() == z3.keys()
    for key in ddp:
        torch.testing.assert_close(z3[key], ddp[key], atol=1e-5, rtol=1e-4)
    assert losses(lora_runs[3]) == pytest.approx(losses(lora_runs[0]), rel=1e-5)


def test_adapter_loads_with_peft_and_merges(lora_runs, demo_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    with torch.no_grad():
        base_logits = base(ids).logits
    peft_model = PeftModel.from_pretrained(base, lora_runs[3] / "model").eval()
    with torch.no_grad():
        adapted = peft_model(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapter changes the model
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-4)


def test_unknown_target_module_is_a_config_error(demo_dir):
    from transformers import AutoModelForCausalLM

    from hpcft.spec import build_spec
    from hpcft.train.model import add_lora

    spec = build_spec(
        {
            "train": {
                "model": str(demo_dir / "model"),
                "data": {"train": "d"},
                "lora": {"enabled": True, "target_modules": ["nope_proj"]},
            }
        }
    )
    with pytest.raises(ConfigError, match=r"train\.lora\.target_modules: .*nope_proj"):
        add_lora(AutoModelForCausalLM.from_pretrained(demo_dir / "model"), spec)
