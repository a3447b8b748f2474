"""What ZeRO-3 offload costs on the host, and swap buffers sized from the model; pure.

DeepSpeed sizes its NVMe swap buffers from config defaults, not from the model: ``offload_param``
allocates ``buffer_count`` × ``buffer_size`` elements (default 5 × 1e8) of locked host memory per
rank, whatever the model's size (6.4 GB per rank at the 16 buffers an earlier CPU workaround asked
for: the OOM of 2 nodes × 2 ranks). Facts from DeepSpeed 0.19.8's source (runtime/swap_tensor/):

* a parameter is swapped only if its per-rank partition, ``ceil(numel / world)`` elements, holds at
  least ``MIN_AIO_BYTES`` (1 MiB, utils.py); a buffer must hold the largest such partition
  (partitioned_param_swapper.py ``get_buffer``: "More elements … than buffer size"), rounded up to
  ``numel_alignment`` = 1024 bytes / element size;
* a buffer is held from a parameter's fetch until its release; with ``stage3_max_reuse_distance``
  at its default 1e9 nothing of a small model is released before backward, so every swapped
  parameter holds one ("Not enough buffers 0 for swapping 1"). hpcft sets the reuse distance to 0
  with NVMe parameters: each module's buffers come back after it runs, and ``buffer_count`` is then
  what one module fetches at once plus room to prefetch;
* ``offload_optimizer`` to NVMe swaps each sub-group through ``buffer_count`` (4) fp32 buffers the
  size of the largest sub-group (``sub_group_size``, default 1e9 elements: the whole partition of
  most models, i.e. the Adam state pinned in RAM); hpcft bounds the sub-group to ``SUB_GROUP``.

``host_per_rank`` adds up a rank's host memory by part, the memory planner's offload rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_AIO_BYTES = 1024**2  # deepspeed/runtime/swap_tensor/utils.py
PARAM_BUFFER_COUNT = 5  # DeepSpeed's default: a module's swapped tensors (1–2) plus prefetch room
OPTIMIZER_BUFFER_COUNT = 4  # DeepSpeed's default: fp32 params, gradients and Adam's two moments
SUB_GROUP = 100_000_000  # elements per optimizer sub-group with NVMe: bounds the 4 fp32 swap buffers
MAX_IN_CPU = 1_000_000_000  # DeepSpeed's offload_param.max_in_cpu default: partitions kept in RAM
# A rank's host memory besides the model states: Python, torch, transformers, DeepSpeed and the data
# (measured on the lab's CPU nodes, benchmarks/bench_memory.py); a CUDA context adds more on GPU nodes.
PROCESS_BASE = 700 * 1024**2


def element_bytes(precision: str) -> int:
    """Bytes of one parameter in the model's dtype under ``precision``."""
    return 2 if precision in ("bf16", "fp16") else 4


def partition(numel: int, world: int) -> int:
    """Elements of one rank's ZeRO-3 partition of a tensor (partition_parameters.py: padded to world)."""
    return math.ceil(numel / world)


def swapped(numels: Sequence[int], world: int, precision: str) -> list[int]:
    """Per-rank partitions (elements) of the tensors DeepSpeed swaps to NVMe (at least ``MIN_AIO_BYTES``)."""
    m = element_bytes(precision)
    return [n for n in (partition(x, world) for x in numels) if n * m >= MIN_AIO_BYTES]


def aligned(numel: int, precision: str) -> int:
    """``numel`` rounded up to DeepSpeed's swap alignment (1024 bytes of elements)."""
    step = 1024 // element_bytes(precision)
    return -(-numel // step) * step


def param_buffer_size(numels: Sequence[int], world: int, precision: str) -> int:
    """``offload_param.buffer_size``: the largest per-rank partition of any tensor, aligned."""
    return aligned(max((partition(x, world) for x in numels), default=1), precision)


@dataclass(frozen=True)
class SwapSettings:
    """The DeepSpeed keys hpcft sets for NVMe offload of a given model."""

    param: Mapping[str, int]  # into zero_optimization.offload_param
    zero: Mapping[str, int]  # into zero_optimization


def swap_settings(numels: Sequence[int] | None, world: int, precision: str, *, param_nvme: bool,
                  optimizer_nvme: bool) -> SwapSettings:  # fmt: skip
    """Swap-buffer settings sized from the model's tensors (``numels``; None: model unknown)."""
    param: dict[str, int] = {}
    zero: dict[str, int] = {}
    if param_nvme:
        param["buffer_count"] = PARAM_BUFFER_COUNT
        if numels:
            param["buffer_size"] = param_buffer_size(numels, world, precision)
        zero["stage3_max_reuse_distance"] = 0
    if optimizer_nvme:
        zero["sub_group_size"] = SUB_GROUP
    return SwapSettings(param, zero)


@dataclass(frozen=True)
class HostMemory:
    """One rank's host memory with ZeRO-3 offload, bytes by part (what ``hpcft plan`` lists)."""

    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        """All parts together."""
        return sum(self.parts.values())


def host_per_rank(numels: Sequence[int], world: int, precision: str, zero: Mapping[str, Any],
                  *, cpu_compute: bool) -> HostMemory:  # fmt: skip
    """A rank's host memory under ZeRO-3 with the offload sections of ``zero`` (a zero_optimization dict).

    Per rank, ``p`` = its share of the parameters, ``m`` = bytes per element in the model dtype
    (DeepSpeed 0.19.8 stage3.py and swap_tensor/): optimizer on CPU: fp32 master copy, fp32 gradients
    and Adam's two moments, 16·p; on NVMe: ``buffer_count`` locked fp32 buffers of the largest
    sub-group instead; both keep the gradient accumulation partition, m·p. Parameters on CPU: their
    partitions, m·p; on NVMe: the locked swap buffers plus the partitions DeepSpeed keeps in RAM up
    to ``max_in_cpu``. Every rank reads the model's full tensors once while loading it (m·P).
    ``cpu_compute`` (no GPU): the gathered full parameters live in host memory too.
    """
    m = element_bytes(precision)
    p = sum(partition(x, world) for x in numels)
    opt, prm = (zero.get(k) or {} for k in ("offload_optimizer", "offload_param"))
    parts: dict[str, int] = {"process (Python, torch, libraries)": PROCESS_BASE}
    parts["loading the model (its full tensors, once)"] = m * sum(numels)  # from_pretrained on every rank
    if opt.get("device") == "cpu":
        parts["optimizer states (fp32 params, grads, Adam)"] = 16 * p
    elif opt.get("device") == "nvme":
        group = min(p, int(zero.get("sub_group_size", 1e9)) + max((partition(x, world) for x in numels), default=0))
        parts["optimizer swap buffers (locked)"] = int(opt.get("buffer_count", OPTIMIZER_BUFFER_COUNT)) * 4 * group
    if opt.get("device") in ("cpu", "nvme"):
        parts["gradient partitions"] = m * p
    if prm.get("device") == "cpu":
        parts["parameter partitions"] = m * p
    elif prm.get("device") == "nvme":
        size = aligned(int(prm.get("buffer_size", 1e8)), precision)
        parts["parameter swap buffers (locked)"] = int(prm.get("buffer_count", 5)) * size * m
        parts["parameter partitions kept in RAM (max_in_cpu)"] = m * min(p, int(prm.get("max_in_cpu", MAX_IN_CPU)))
    if cpu_compute:
        parts["gathered parameters (CPU compute)"] = m * sum(numels)
    return HostMemory(parts)
