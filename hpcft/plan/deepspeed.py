"""The DeepSpeed configuration generated from the spec; pure.

Decides the DeepSpeed config of a job: from ``train.zero`` / ``train.offload`` / precision / batch
settings, or the user's own JSON (``train.deepspeed_config``), which the spec may only repeat, never
contradict. ``hpcft plan`` shows the result as ``RUN/ds_config.json`` and the trainer reads that file,
so this module is the one source of truth (and the one planner module the ranks import). It knows
nothing about the machine: adaptations for GPU-less nodes live in ``hpcft.train.cpu_workarounds``;
nothing here imports DeepSpeed.

The one function that reads a file is ``read_user_config`` (the user's JSON, at plan time).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from hpcft.errors import ConfigError
from hpcft.plan import offload
from hpcft.spec.model import offload_devices

if TYPE_CHECKING:
    from hpcft.spec import JobSpec, TrainSpec

OFFLOAD_KEYS = ("offload_optimizer", "offload_param")
# With offload, DeepSpeed wants its own CPU optimizer (DeepSpeedCPUAdam): a torch optimizer over
# offloaded states is "poor performance" (engine.py asserts unless zero_force_ds_cpu_optimizer=false).
# The "auto" values are filled by the HF Trainer from the spec's lr / weight decay.
OFFLOAD_OPTIMIZER = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}


def config_offload_devices(config: Mapping[str, Any] | None) -> tuple[str, str]:
    """(optimizer, param) offload devices of a DeepSpeed config (``none`` where a section is absent).

    The one reading of a config's offload sections; ``spec.offload_devices`` is the spec's side.
    """
    zero = (config or {}).get("zero_optimization") or {}
    opt, param = ((zero.get(key) or {}).get("device") or "none" for key in OFFLOAD_KEYS)
    return opt, param


def deepspeed_config(
    spec: JobSpec,
    user: Mapping[str, Any] | None = None,
    run_dir: str | None = None,
    numels: Sequence[int] | None = None,
) -> dict | None:
    """The DeepSpeed config of the job (None: plain DDP, no DeepSpeed).

    Args:
        spec: the resolved spec.
        user: the user's own config (``train.deepspeed_config``, already read), used as given.
        run_dir: the run directory; NVMe swap files go to ``NVME_PATH/<run dir name>`` so that two
            runs on one node never share (and delete) each other's swap folder.
        numels: the model's parameter tensor sizes (``memory.parameter_numels``), to size NVMe swap
            buffers from; None leaves DeepSpeed's defaults.
    """
    t = spec.train
    if user is not None:
        return copy.deepcopy(dict(user))
    if t.zero == 0:
        return None
    # A user's own Trainer (launch.command) has its own batch size, precision and clipping: "auto"
    # lets it fill them in, where hpcft's numbers would contradict its arguments and DeepSpeed refuse.
    own = bool(spec.launch.command)
    return {
        "train_micro_batch_size_per_gpu": "auto" if own else t.batch_size,
        "gradient_accumulation_steps": "auto" if own else t.grad_accum,
        "train_batch_size": "auto",  # x world size, which the Trainer knows
        "gradient_clipping": "auto" if own else t.max_grad_norm,
        "bf16": {"enabled": "auto" if own else t.precision == "bf16"},
        "fp16": {"enabled": "auto" if own else t.precision == "fp16"},
        "zero_optimization": _zero_section(t, run_dir, numels, spec.ranks),
        **({"optimizer": copy.deepcopy(OFFLOAD_OPTIMIZER)} if offload_devices(t) != ("none", "none") else {}),
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def _zero_section(t: TrainSpec, run_dir: str | None, numels: Sequence[int] | None, world: int) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": t.zero,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",  # the Trainer fills these three from the model's hidden size
    }
    if t.zero == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=t.gather_16bit_on_save,
        )
    optimizer, param = offload_devices(t)
    nvme = t.offload.nvme_path
    if nvme and run_dir:
        nvme = str(PurePath(nvme) / PurePath(run_dir).name)
    for key, device in (("offload_optimizer", optimizer), ("offload_param", param)):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": True, **({"nvme_path": nvme} if device == "nvme" else {})}
    swap = offload.swap_settings(numels, world, t.precision, param_nvme=param == "nvme",
                                 optimizer_nvme=optimizer == "nvme")  # fmt: skip
    if swap.param:
        zero["offload_param"].update(swap.param)
    zero.update(swap.zero)
    return zero


def check_swap_buffers(config: Mapping[str, Any], numels: Sequence[int] | None, world: int, precision: str,
                       source: str) -> list[str]:  # fmt: skip
    """A parameter swap buffer that cannot hold the largest partition fails at DeepSpeed's first fetch: say so now."""
    param = (config.get("zero_optimization") or {}).get("offload_param") or {}
    if param.get("device") != "nvme" or not numels:
        return []
    need = max(offload.partition(n, world) for n in numels)
    size = param.get("buffer_size", 100_000_000)
    if not isinstance(size, int | float) or size >= need:
        return []
    return [
        f"{source}: zero_optimization.offload_param.buffer_size {size:g} elements cannot hold the largest parameter "
        f"partition, {need} elements ({world} ranks) (DeepSpeed asserts 'More elements … than buffer size' at "
        f"the first fetch; HINT: buffer_size >= {offload.aligned(need, precision)}, or drop it and let hpcft size it)"
    ]


def check_user_config(spec: JobSpec, user: Mapping[str, Any], source: str) -> list[str]:
    """Where the spec contradicts the user's DeepSpeed JSON (the HF Trainer would stop at start; we stop now)."""
    t, zero = spec.train, user.get("zero_optimization") or {}
    where = f"train.deepspeed_config ({source})"
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        return [f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}"]
    problems = []
    if t.zero and t.zero != stage:
        problems.append(
            f"train.zero: {t.zero} contradicts {where}: zero_optimization.stage {stage} (HINT: drop --zero)"
        )
    o = t.offload
    spec_param = o.param if o.param is not None else (o.device if stage == 3 else "none")
    for key, spec_device in (("offload_optimizer", o.optimizer or o.device), ("offload_param", spec_param)):
        json_device = (zero.get(key) or {}).get("device", "none")
        if spec_device != "none" and spec_device != json_device:
            problems.append(
                f"train.offload: {spec_device} contradicts {where}: zero_optimization.{key}.device {json_device} "
                "(HINT: set offload in the JSON only)"
            )
        if json_device == "nvme" and not (zero.get(key) or {}).get("nvme_path"):
            problems.append(f"{where}: zero_optimization.{key}.device nvme needs an nvme_path")
        if json_device == "nvme" and stage < 3:
            problems.append(f"{where}: zero_optimization.{key}.device nvme needs stage 3, got {stage}")
    matches = {
        "train_micro_batch_size_per_gpu": ("train.batch_size", t.batch_size),
        "gradient_accumulation_steps": ("train.grad_accum", t.grad_accum),
        "gradient_clipping": ("train.max_grad_norm", t.max_grad_norm),
        "bf16.enabled": ("train.precision", t.precision == "bf16"),
        "fp16.enabled": ("train.precision", t.precision == "fp16"),
    }
    for dotted, (key, want) in matches.items():
        got = _dotted(user, dotted)
        if got not in (None, "auto") and got != want:
            shown = t.precision if key == "train.precision" else want
            problems.append(f'{key}: {shown} contradicts {where}: {dotted} {got} (HINT: write "auto" in the JSON)')
    return problems


def _dotted(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def read_user_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read the user's DeepSpeed JSON; a missing or malformed file is a ``ConfigError``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError([f"train.deepspeed_config: file not found: {p}"]) from None
    except (OSError, ValueError) as e:
        raise ConfigError([f"train.deepspeed_config: {p} is not a readable JSON file: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"train.deepspeed_config: {p} must hold a JSON object, got {type(data).__name__}"])
    return data


def config_offload_devices_of_spec(spec: JobSpec, user: Mapping[str, Any] | None) -> tuple[str, str]:
    """(optimizer, param) offload devices of the job: the user's JSON when given, else the spec's."""
    return config_offload_devices(user) if user is not None else offload_devices(spec.train)


# DeepSpeed's C++ ops hpcft prebuilds: name → (op_builder class, the extension's NAME, i.e. the folder
# and .so under TORCH_EXTENSIONS_DIR). From deepspeed/ops/op_builder/*.py (0.19.8).
DS_OPS = {
    "shm_comm": ("ShareMemCommBuilder", "deepspeed_shm_comm"),
    "async_io": ("AsyncIOBuilder", "async_io"),
    "cpu_adam": ("CPUAdamBuilder", "cpu_adam"),
    "fused_adam": ("FusedAdamBuilder", "fused_adam"),
}


def ops_needed(config: Mapping[str, Any] | None, *, cuda: bool, user_config: bool) -> tuple[str, ...]:
    """The DeepSpeed ops a rank of this job compiles on first use (none without DeepSpeed).

    On CPU: ``shm_comm`` at every ``init_distributed``, ``async_io`` with NVMe offload, ``cpu_adam`` only
    for a user's optimizer block with offload (hpcft's own config runs torch AdamW there,
    ``train.cpu_workarounds``). On GPUs: ``cpu_adam`` with offload, else ``fused_adam``, for an
    optimizer block; ``async_io`` with NVMe.
    """
    if not config:
        return ()
    optimizer_device, param_device = config_offload_devices(config)
    offloaded = (optimizer_device, param_device) != ("none", "none")
    has_optimizer = "optimizer" in config
    ops = [] if cuda else ["shm_comm"]
    if "nvme" in (optimizer_device, param_device):
        ops.append("async_io")
    if has_optimizer and offloaded and (cuda or user_config):
        ops.append("cpu_adam")
    elif has_optimizer and cuda and not offloaded:
        ops.append("fused_adam")
    return tuple(ops)
