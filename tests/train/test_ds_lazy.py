"""hpcft.train.ds_lazy: a Trainer without DeepSpeed trains and saves without importing deepspeed, which
accelerate (1.15.0) imports at every Trainer's construction otherwise; with deepspeed imported, accelerate's
unwrap looks for its engine again."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.train

PROBE = """\
import sys, torch
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments
if sys.argv[1] == "lazy":
    from hpcft.train.ds_lazy import keep_deepspeed_lazy
    keep_deepspeed_lazy()
    keep_deepspeed_lazy()  # twice: still one wrapper
config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=100)
args = TrainingArguments(output_dir=sys.argv[2], use_cpu=True, report_to="none", max_steps=2, save_steps=1)
rows = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}] * 4
Trainer(model=AutoModelForCausalLM.from_config(config), args=args, train_dataset=rows).train()
print("imported", "deepspeed" in sys.modules)
from accelerate.utils import other
import deepspeed
print("after import", other.is_deepspeed_available())
"""


@pytest.mark.parametrize("mode", ["lazy", "upstream"])
def test_deepspeed_stays_unimported_without_zero(train_stack, tmp_path, mode):
    proc = subprocess.run([sys.executable, "-c", PROBE, mode, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {mode == 'upstream'}" in proc.stdout  # upstream imports it: why the workaround exists
    assert "after import True" in proc.stdout
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
