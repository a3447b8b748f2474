"""hpcft export: a checkpoint becomes a model directory that loads with from_pretrained."""

from __future__ import annotations

import json

import pytest

from tests.conftest import hpcft

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def local_run(demo_dir, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("export-runs")
    hpcft("submit", str(demo_dir / "job.yaml"), "--backend", "local", "--wait", "--runs-dir", str(runs_dir),
          "-o", "train.max_steps=10", "-o", "train.save_steps=5")  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    return run


@pytest.mark.parametrize(("step", "dtype"), [(None, "fp32"), (5, "bf16")])
def test_export_full_model_checkpoint(local_run, tmp_path, step, dtype):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    args = ["export", str(local_run), "--out", str(out), "--dtype", dtype]
    if step:
        args += ["--checkpoint", str(step)]
    assert f"exported checkpoint-{step or 10}" in hpcft(*args).stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token == "</s>"
    source = load_file(local_run / "checkpoints" / f"checkpoint-{step or 10}" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        want = source[name].to(torch.bfloat16 if dtype == "bf16" else torch.float32)
        assert tensor.dtype == want.dtype and torch.equal(tensor, want), name


def test_export_refuses_damaged_checkpoint_and_existing_dir(local_run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    proc = hpcft("export", str(local_run), "--out", str(tmp_path / "full"), check=False)
    assert proc.returncode == 1 and "exists and is not empty" in proc.stderr
    manifest = local_run / "checkpoints" / "checkpoint-5" / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["files"]["model.safetensors"] += 1
    manifest.write_text(json.dumps(data))
    proc = hpcft("export", str(local_run), "--checkpoint", "5", "--out", str(tmp_path / "new"), check=False)
    assert proc.returncode == 1 and "manifest says" in proc.stderr and "Traceback" not in proc.stderr
