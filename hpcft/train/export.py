"""``hpcft export RUN --out DIR``: a checkpoint → a Hugging Face model directory (safetensors).

Three kinds of checkpoint are handled:
* a full model (``model.safetensors``: DDP, ZeRO-0/1/2, ZeRO-3 with 16-bit gathering on save);
* ZeRO shards only (``global_stepN/``): consolidated with DeepSpeed's memory-lean
  ``convert_zero_checkpoint_to_fp32_state_dict`` (the path of its ``zero_to_fp32.py``);
* a LoRA adapter (``adapter_config.json``): saved as an adapter, or merged into the base model
  with ``--merge-lora``.
The result is loaded back with ``from_pretrained`` before the command reports success.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.rundir import checkpoints, store

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")  # fmt: skip


def pick_checkpoint(run: Path, step: int | None) -> Path:
    """``checkpoint-STEP`` (validated) or the newest complete checkpoint of the run."""
    spec = store.load_run_spec(run)
    base = checkpoints.checkpoints_dir(spec, run)
    if step is not None:
        path = base / f"{checkpoints.PREFIX}{step}"
        why = checkpoints.problem(path) if path.is_dir() else "no such checkpoint"
        if why:
            raise HpcftError(f"cannot export {path}: {why}")
        return path
    info = checkpoints.newest_complete(base)
    if info is None:
        raise HpcftError(f"{run.name} has no complete checkpoint under {base}", hint="train until a save happens")
    return info.path


def export(run: Path, out: Path, *, step: int | None = None, merge_lora: bool = False, dtype: str = "fp32") -> Path:
    """Write a loadable model (or adapter) directory to ``out``; returns the checkpoint used."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if out.exists() and any(out.iterdir()):
        raise HpcftError(f"{out} exists and is not empty", hint="choose a new --out directory")
    ckpt = pick_checkpoint(run, step)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if (ckpt / "adapter_config.json").is_file():
        _export_lora(run, ckpt, out, merge_lora, torch_dtype)
    elif (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file():
        _save_model(_load(ckpt, torch_dtype), out, torch_dtype)
    elif any(ckpt.glob("global_step*")):
        _export_zero(ckpt, out, torch_dtype)
    else:
        raise HpcftError(f"{ckpt} holds neither model weights, ZeRO shards nor a LoRA adapter")
    _copy_tokenizer(ckpt, run, out)
    verify(out)
    return ckpt


def _load(path: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _save_model(model, out: Path, dtype) -> None:
    model.to(dtype).save_pretrained(out, safe_serialization=True)


def _export_zero(ckpt: Path, out: Path, dtype) -> None:
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        convert_zero_checkpoint_to_fp32_state_dict(str(ckpt), tmp, safe_serialization=True)
        from safetensors.torch import load_file

        state = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            state.update(load_file(f))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise HpcftError(f"ZeRO shards of {ckpt} do not match the model: missing {missing}, unexpected {unexpected}")
    _save_model(model, out, dtype)


def _export_lora(run: Path, ckpt: Path, out: Path, merge: bool, dtype) -> None:
    from peft import PeftModel

    base_path = json.loads((ckpt / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base_path = base_path or store.load_run_spec(run).train.model
    model = PeftModel.from_pretrained(_load(Path(base_path), dtype), ckpt)
    if merge:
        _save_model(model.merge_and_unload(), out, dtype)
    else:
        model.save_pretrained(out, safe_serialization=True)


def _copy_tokenizer(ckpt: Path, run: Path, out: Path) -> None:
    spec = store.load_run_spec(run)
    for src in (ckpt, Path(spec.train.tokenizer or spec.train.model or ckpt)):
        found = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        if found:
            for f in found:
                shutil.copy2(src / f, out / f)
            return


def verify(out: Path) -> None:
    """Load the export back; an adapter must hold non-empty, non-zero tensors."""
    if (out / "adapter_config.json").is_file():
        from safetensors.torch import load_file

        tensors = load_file(out / "adapter_model.safetensors")
        if not tensors or all(t.numel() == 0 or not bool(t.abs().sum()) for t in tensors.values()):
            raise HpcftError(f"the adapter in {out} is empty (no trained LoRA weights)")
        return
    model = _load(out, None)
    n = sum(p.numel() for p in model.parameters())
    log.info("exported %s: %s with %d parameters", out, type(model).__name__, n)
