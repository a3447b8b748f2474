"""Model and tokenizer loading: any AutoModelForCausalLM directory, as a user's real model loads.

Decides what the Trainer trains: the full model, or LoRA adapters on a frozen base (peft; QLoRA loads
the base 4-bit with bitsandbytes where CUDA exists). For mixture-of-experts models it turns on the
router load-balancing loss and, under ZeRO-3, registers each MoE block as a ZeRO-3 leaf module so
all ranks fetch the same parameters even when their tokens pick different experts. It does not set
up DeepSpeed (``hpcft.train.args``) or decide CPU workarounds (``hpcft.train.cpu_workarounds``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from hpcft.errors import ConfigError
from hpcft.spec import JobSpec

log = logging.getLogger("hpcft.train")


def load_tokenizer(spec: JobSpec):
    """The tokenizer of ``train.tokenizer`` (default: the model directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.train.tokenizer or spec.train.model)


def load_config(spec: JobSpec):
    """The model's config, with the router aux loss switched on/off and weighted for MoE models."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.train.model)
    moe = spec.train.moe
    if hasattr(config, "output_router_logits"):
        config.output_router_logits = moe.router_aux_loss
        if moe.router_aux_loss_coef is not None:
            config.router_aux_loss_coef = moe.router_aux_loss_coef
        log.info(
            "MoE model: router aux loss %s (coef %s)",
            "on" if moe.router_aux_loss else "off",
            getattr(config, "router_aux_loss_coef", "?"),
        )
    return config


def load_model(spec: JobSpec, args: Any = None):
    """The model of ``train.model``, ready for the Trainer (a PeftModel with LoRA).

    Args:
        spec: the resolved spec.
        args: the run's ``TrainingArguments`` (already created: with ZeRO-3 they switch on zero.Init).
    """
    from transformers import AutoModelForCausalLM

    t = spec.train
    kwargs: dict[str, Any] = {"config": load_config(spec), "dtype": _base_dtype(spec)}
    if t.lora.load_in_4bit:
        kwargs.update(quantization_kwargs(spec, zero3=_is_zero3(args)))
    zero3 = _is_zero3(args)
    with _without_zero_init(args) if zero3 and not t.zero_init else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(t.model, **kwargs)
    if zero3 and t.moe.zero3_leaf:
        register_moe_leaves(model)
    if t.lora.enabled:
        model = add_lora(model, spec)
    return model


def _base_dtype(spec: JobSpec):
    """fp32 weights for full fine-tuning (mixed precision casts); a LoRA base may stay 16-bit (it is frozen)."""
    import torch

    precision = spec.train.precision
    if spec.train.lora.enabled and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


def _is_zero3(args: Any) -> bool:
    config = getattr(args, "hf_deepspeed_config", None)
    return bool(config is not None and config.is_zero3())


@contextlib.contextmanager
def _without_zero_init(args: Any) -> Iterator[None]:
    """``train.zero_init: false``: load the whole model on every rank; the engine partitions it later.

    zero.Init is on while the Trainer's DeepSpeed config is registered (``TrainingArguments`` does it).
    """
    from transformers.integrations import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(args.hf_deepspeed_config)


def moe_block_classes(model) -> list[type]:
    """The classes of a model's MoE blocks: modules that hold an ``experts`` submodule."""
    import torch

    found = {type(m) for m in model.modules() if isinstance(getattr(m, "experts", None), torch.nn.Module)}
    return sorted(found, key=lambda c: c.__name__)


def register_moe_leaves(model) -> list[type]:
    """Make every MoE block a ZeRO-3 leaf: its parameters are gathered whole, before the router picks.

    Without it, ZeRO-3 fetches expert parameters as each expert runs, and ranks whose tokens pick
    different experts issue different all-gathers (a hang, or a trace mismatch).
    """
    from deepspeed.utils import set_z3_leaf_modules

    classes = moe_block_classes(model)
    if classes:
        set_z3_leaf_modules(model, classes)
        log.info("ZeRO-3 leaf modules: %s", ", ".join(c.__name__ for c in classes))
    return classes


def lora_target_modules(targets: tuple[str, ...]) -> str | list[str]:
    """peft's ``target_modules``: the string ``all-linear`` (every linear layer but the output head) or names."""
    return "all-linear" if tuple(targets) == ("all-linear",) else list(targets)


def add_lora(model, spec: JobSpec):
    """Wrap ``model`` with LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    t = spec.train
    # The adapters' random init must not depend on how much randomness loading used (zero.Init does
    # not use the same as a plain load): seed it, so DDP and ZeRO runs start from the same adapter.
    set_seed(t.seed)
    if t.lora.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=lora_target_modules(t.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise ConfigError([f"train.lora.target_modules: {e}"]) from None
    trainable, total = model.get_nb_trainable_parameters()
    share = 100 * trainable / total
    log.info("LoRA r=%d alpha=%g: %d of %d parameters train (%.2f%%)", t.lora.r, t.lora.alpha, trainable, total, share)
    return model


def quantization_kwargs(spec: JobSpec, zero3: bool) -> dict[str, Any]:
    """``from_pretrained`` kwargs of QLoRA: 4-bit NF4 with double quantization (bitsandbytes, CUDA only)."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            ["train.lora.load_in_4bit: QLoRA needs the bitsandbytes package (HINT: pip install bitsandbytes)"]
        ) from None
    compute = torch.float16 if spec.train.precision == "fp16" else torch.bfloat16
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,  # ZeRO-3 partitions the packed 4-bit weights as this dtype
    )
    kwargs: dict[str, Any] = {"quantization_config": quant}
    if not zero3:  # DDP: each rank holds its whole quantized model on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def parameter_sizes(spec: JobSpec) -> list[int]:
    """The element count of every parameter of the model, from its config only (nothing is allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(spec))
    return [p.numel() for p in model.parameters()]
