"""Everything the trainer does differently on a node without CUDA — and only here.

Each function works around one behaviour of DeepSpeed / HF Trainer / accelerate measured on GPU-less
machines (``docs/facts.md``), names the upstream cause, and is a no-op where CUDA exists.
Tests: ``tests/unit/test_zero_config.py`` (the config changes), ``tests/train/test_zero.py`` (the
gloo init and ``use_cpu`` switched off → the upstream failure; everything on → ZeRO-3 + offload trains
with torch AdamW; the NVMe fixes → real swapping to disk).

DeepSpeed's JIT C++ ops are built once per cache by ``hpcft ops build`` / ``hpcft.node.ds_ops``.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING, Any

from hpcft.errors import ConfigError
from hpcft.plan.deepspeed import config_offload_devices

if TYPE_CHECKING:
    from hpcft.spec import TrainSpec

log = logging.getLogger("hpcft.train")


def has_cuda() -> bool:
    """Whether this process sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def trainer_device_args(cuda: bool) -> dict[str, Any]:
    """``TrainingArguments`` keys for a CPU-only node (empty with CUDA).

    ``use_cpu=True``: without it accelerate finds no device, counts one process, and DeepSpeed's batch
    check fails with ``AssertionError: ... train_batch_size ... 4 != 4 * 1 * 2`` (world size 1; same
    family as huggingface/accelerate#1324). ``ddp_backend="gloo"``: NCCL needs CUDA.
    """
    return {} if cuda else {"use_cpu": True, "ddp_backend": "gloo"}


def init_deepspeed_gloo(cuda: bool) -> None:
    """Start DeepSpeed's communication over gloo before ``TrainingArguments`` (CPU only).

    Under ZeRO-3, ``from_pretrained`` runs inside ``deepspeed.zero.Init``, which takes the world size
    from ``deepspeed.comm``. On CPU nothing initialises it before the model loads, so zero.Init sees
    world size 1 and DeepSpeed asserts ``8 != 4 * 1 * 1`` (deepspeedai/DeepSpeed#4703: zero.Init
    before the process group is up). DeepSpeed has no CPU ccl here, so the backend must be gloo.
    """
    if cuda:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")


def check_cuda_features(train: TrainSpec, cuda: bool) -> None:
    """Refuse, at start, what needs CUDA: fp16 mixed precision and QLoRA (bitsandbytes 4-bit).

    fp16 would run on CPU (measured: HF's AMP and DeepSpeed's fp16 optimizer both train, with loss
    scaling) but without fast fp16 arithmetic — bf16 is the CPU's 16-bit format — so a CPU fp16 job
    is always a mistake. QLoRA would fail inside transformers/bitsandbytes without naming the key.
    """
    problems = []
    host = os.uname().nodename
    if train.precision == "fp16" and not cuda:
        problems.append(
            f"train.precision: fp16 mixed precision is for CUDA GPUs and {host} has none; CPUs have no fast "
            "fp16 arithmetic (HINT: -o train.precision=bf16, the CPU's 16-bit format, or fp32)"
        )
    if train.lora.load_in_4bit and not cuda:
        problems.append(
            f"train.lora.load_in_4bit: QLoRA loads the model 4-bit with bitsandbytes, which needs CUDA GPUs, and "
            f"{host} has none (HINT: plain LoRA on CPU: -o train.lora.load_in_4bit=false)"
        )
    if problems:
        raise ConfigError(problems)


def adapt_ds_config(config: dict[str, Any], cuda: bool, generated: bool) -> tuple[dict[str, Any], list[str]]:
    """The DeepSpeed config this CPU-only rank can run, and what changed (unchanged with CUDA).

    Args:
        config: the job's DeepSpeed config (``RUN/ds_config.json``).
        cuda: whether this node has CUDA.
        generated: whether hpcft generated it (a user's own optimizer block is kept).
    """
    out = copy.deepcopy(config)
    if cuda:
        return out, []
    changes: list[str] = []
    zero = out.get("zero_optimization") or {}
    optimizer_device, param_device = config_offload_devices(out)
    if (optimizer_device, param_device) != ("none", "none"):
        changes += _torch_optimizer_with_offload(out, generated)
    if param_device == "nvme":
        changes += _nvme_param_swap_fixes(zero)
    return out, changes


def _torch_optimizer_with_offload(config: dict[str, Any], generated: bool) -> list[str]:
    """Offload on CPU: the Trainer's torch AdamW, with DeepSpeed's CPU-optimizer requirement off.

    With ``offload_optimizer`` set and no ``zero_force_ds_cpu_optimizer: false``, accelerate's
    ``_prepare_deepspeed`` silently swaps the Trainer's torch optimizer for DeepSpeedCPUAdam
    (``map_pytorch_optim_to_deepspeed``) and DeepSpeed's engine refuses any other client optimizer
    ("You are using ZeRO-Offload with a client provided optimizer ...", runtime/engine.py): both
    because on GPUs a torch step over host memory is slow. Without a GPU nothing leaves host memory
    anyway; torch AdamW keeps the optimizer identical to the DDP and non-offload ZeRO runs
    (comparable losses) and skips the ~70 s cpu_adam JIT build. A user's own optimizer block is kept.
    """
    changes = []
    if generated and "optimizer" in config:
        del config["optimizer"]
        changes.append("optimizer: DeepSpeedCPUAdam -> the Trainer's torch AdamW (no GPU: nothing to offload from)")
    if "optimizer" not in config and config.get("zero_force_ds_cpu_optimizer") is not False:
        config["zero_force_ds_cpu_optimizer"] = False
        changes.append("zero_force_ds_cpu_optimizer: false (torch optimizer with offload)")
    return changes


def _nvme_param_swap_fixes(zero: dict[str, Any]) -> list[str]:
    """Parameter swapping to NVMe on CPU: no NVMe prefetch, buffers returned after each module.

    With partitions above DeepSpeed's 1 MiB AIO minimum (runtime/swap_tensor/utils.py MIN_AIO_BYTES)
    swapping really starts. The prefetch path then failed here with ``AssertionError: param 16
    already assigned swap buffer id 10`` (``__prefetch_nvme_param_partitions``; cf.
    deepspeedai/Megatron-DeepSpeed#196) until prefetching was disabled with
    ``stage3_prefetch_bucket_size: 0``. ``AssertionError: Not enough buffers 0 for swapping 1``
    (deepspeedai/DeepSpeed#3062, open) comes from ``stage3_max_reuse_distance``: at its default 1e9
    no parameter of a small model is released before backward, so each swapped one holds a buffer;
    hpcft's generated config sets 0 (``plan.offload``), and a user's config without the key gets it
    here. The buffer count stays as planned: raising it (to 16, as an earlier version did) at
    DeepSpeed's default ``buffer_size`` of 1e8 elements locks 6.4 GB per rank.
    """
    changes = []
    if zero.get("stage3_prefetch_bucket_size") != 0:
        zero["stage3_prefetch_bucket_size"] = 0
        changes.append("zero_optimization.stage3_prefetch_bucket_size: 0 (NVMe param prefetch)")
    if "stage3_max_reuse_distance" not in zero:
        zero["stage3_max_reuse_distance"] = 0
        changes.append("zero_optimization.stage3_max_reuse_distance: 0 (NVMe swap buffers back after each module)")
    return changes
