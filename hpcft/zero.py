"""DeepSpeed and accelerate configuration generated from the spec; pure.

Decides the DeepSpeed config of a job: from ``train.zero`` / ``train.offload`` / precision / batch
settings, or the user's own JSON (``train.deepspeed_config``), which the spec may only repeat, never
contradict. ``hpcft plan`` shows the result as ``RUN/ds_config.json`` and the trainer reads that file,
so this module is the one source of truth. It knows nothing about the machine: adaptations for
GPU-less nodes live in ``hpcft.train.cpu_workarounds``; nothing here imports DeepSpeed.

The one function that reads a file is ``read_user_config`` (the user's JSON, at plan time).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import yaml

from hpcft.errors import ConfigError

if TYPE_CHECKING:
    from hpcft.spec import JobSpec, TrainSpec

DS_CONFIG_FILE = "ds_config.json"
# With offload, DeepSpeed wants its own CPU optimizer (DeepSpeedCPUAdam): a torch optimizer over
# offloaded states is "poor performance" (engine.py asserts unless zero_force_ds_cpu_optimizer=false).
# The "auto" values are filled by the HF Trainer from the spec's lr / weight decay.
OFFLOAD_OPTIMIZER = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}


def offload_devices(train: TrainSpec) -> tuple[str, str]:
    """(optimizer, param) offload devices: ``offload.device`` fills the optimizer, and under ZeRO-3 the params."""
    o = train.offload
    optimizer = o.optimizer if o.optimizer is not None else o.device
    param = o.param if o.param is not None else (o.device if train.zero == 3 else "none")
    return optimizer, param


def check_zero(train: TrainSpec) -> list[str]:
    """What DeepSpeed would reject, or silently ignore, in the spec's stage/offload settings."""
    problems = []
    path = train.offload.nvme_path
    if path and not (path.startswith(("/", "$", "~"))):
        problems.append(
            f"train.offload.nvme_path: must be an absolute node-local path, got {path!r} (HINT: e.g. /local/nvme "
            "or $TMPDIR/nvme; $VARS expand on each node)"
        )
    if train.deepspeed_config:
        return problems  # stage/offload come from the JSON: ``check_user_config`` compares them at plan time
    optimizer, param = offload_devices(train)
    stage = train.zero
    if stage == 0 and (optimizer, param) != ("none", "none"):
        problems.append(
            f"train.offload: offloading needs DeepSpeed ZeRO, got train.zero 0 (plain DDP) with optimizer "
            f"{optimizer}, param {param} (HINT: --zero 3 --offload cpu, or --offload none)"
        )
    elif param != "none" and stage < 3:
        problems.append(
            f"train.offload.param: parameter offload is ZeRO-3 only, got train.zero {stage} "
            "(HINT: --zero 3, or offload only the optimizer state: train.offload.optimizer)"
        )
    elif "nvme" in (optimizer, param) and stage < 3:
        problems.append(
            f"train.offload: NVMe offload is ZeRO-3 only, got train.zero {stage} (DeepSpeed's stage 1/2 optimizer "
            "would silently keep the state in CPU memory; HINT: --zero 3, or --offload cpu)"
        )
    if "nvme" in (optimizer, param) and not path:
        problems.append(
            "train.offload.nvme_path: required with NVMe offload (HINT: a directory on each node's local NVMe disk, "
            "e.g. -o train.offload.nvme_path=/local/nvme; not the shared filesystem)"
        )
    return problems


def deepspeed_config(spec: JobSpec, user: Mapping[str, Any] | None = None, run_dir: str | None = None) -> dict | None:
    """The DeepSpeed config of the job (None: plain DDP, no DeepSpeed).

    Args:
        spec: the resolved spec.
        user: the user's own config (``train.deepspeed_config``, already read), used as given.
        run_dir: the run directory; NVMe swap files go to ``NVME_PATH/<run dir name>`` so that two
            runs on one node never share (and delete) each other's swap folder.
    """
    t = spec.train
    if user is not None:
        return copy.deepcopy(dict(user))
    if t.zero == 0:
        return None
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": "auto",  # x world size, which the Trainer knows
        "gradient_clipping": t.max_grad_norm,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "zero_optimization": _zero_section(t, run_dir),
        **({"optimizer": copy.deepcopy(OFFLOAD_OPTIMIZER)} if offload_devices(t) != ("none", "none") else {}),
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def _zero_section(t: TrainSpec, run_dir: str | None) -> dict[str, Any]:
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
    return zero


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


def plan_files(spec: JobSpec, run_dir: str) -> dict[str, str]:
    """``{"ds_config.json": text}`` when the job uses DeepSpeed (reads and checks the user's JSON if given)."""
    user = None
    if spec.train.deepspeed_config:
        user = read_user_config(spec.train.deepspeed_config)
        problems = check_user_config(spec, user, spec.train.deepspeed_config)
        if problems:
            raise ConfigError(problems)
    config = deepspeed_config(spec, user, run_dir)
    return {DS_CONFIG_FILE: json.dumps(config, indent=2) + "\n"} if config else {}


def accelerate_config(spec: JobSpec, *, num_machines: int, num_processes: int) -> dict[str, Any]:
    """An ``accelerate launch`` config: MULTI_GPU, or DEEPSPEED with the job's ``ds_config.json``.

    With DeepSpeed, stage, offload and precision travel in ``ds_config.json``, the file the trainer
    reads too: the HF Trainer hands accelerate its own DeepSpeed config, and accelerate then refuses
    a YAML that also sets zero_stage/offload_*/mixed_precision ("When using `deepspeed_config_file`,
    the following accelerate config variables will be ignored", utils/dataclasses.py). The path is
    relative because ``hpcft node`` starts accelerate inside the run directory.
    """
    t = spec.train
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": num_machines,
        "num_processes": num_processes,
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": {"fp32": "no"}.get(t.precision, t.precision),
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "downcast_bf16": "no",
    }
    if t.zero > 0 or t.deepspeed_config:
        del config["mixed_precision"]  # from ds_config.json
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": DS_CONFIG_FILE,
            "zero3_init_flag": t.zero_init and t.zero in (0, 3),  # 0: the user's JSON decides the stage
            # hpcft runs `accelerate launch` on every node; "standard" starts torch.distributed.run there,
            # where accelerate's multi-machine default (pdsh) would call the `deepspeed` runner from one node.
            "deepspeed_multinode_launcher": "standard",
        }
    return config


def accelerate_config_text(spec: JobSpec, *, num_machines: int, num_processes: int) -> str:
    """``accelerate_config`` as the YAML file ``accelerate launch --config_file`` reads."""
    data = accelerate_config(spec, num_machines=num_machines, num_processes=num_processes)
    header = "# Generated by hpcft; machine rank and main process come from the allocation.\n"
    t = spec.train
    if t.deepspeed_config:
        header += f"# DeepSpeed: your config {t.deepspeed_config}, copied to ds_config.json\n"
    elif t.zero > 0:
        optimizer, param = offload_devices(t)
        header += (
            f"# DeepSpeed ZeRO-{t.zero}, offload optimizer {optimizer} / param {param}, precision {t.precision}: "
            "all in ds_config.json\n"
        )
    return header + yaml.safe_dump(data, sort_keys=False)
