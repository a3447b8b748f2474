"""The Trainer's settings on this rank: HF ``TrainingArguments`` and the DeepSpeed config.

The one place that maps the spec to Trainer settings (precision, schedule, clipping, logging levels,
NEFTune, checkpointing, compile). It also prepares DeepSpeed on this rank, in the order that works:
read ``RUN/ds_config.json`` (``hpcft.plan.deepspeed``'s output, the single source), adapt it to a CPU-only node
(``cpu_workarounds``), check the NVMe swap directory, start DeepSpeed's process group — all before
``TrainingArguments`` exists, because with ZeRO-3 creating it switches on zero.Init for the model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError
from hpcft.plan import deepspeed as zero
from hpcft.rundir.layout import DS_CONFIG_FILE
from hpcft.spec import JobSpec
from hpcft.train import cpu_workarounds

log = logging.getLogger("hpcft.train")

MIN_AIO_BYTES = 1024**2  # DeepSpeed swaps only tensors of at least this size (runtime/swap_tensor/utils.py)
# Filesystems that are shared between nodes: swap traffic there would hit every user of the cluster.
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.ceph", "glusterfs", "panfs")


def training_arguments(spec: JobSpec, output_dir: str, ds_config: dict[str, Any] | None = None):
    """HF ``TrainingArguments`` from the spec (CPU: gloo; GPU: the default NCCL).

    Args:
        spec: the resolved spec.
        output_dir: where checkpoints go.
        ds_config: this rank's DeepSpeed config from ``deepspeed_setup`` (None: plain DDP).
    """
    from transformers import TrainingArguments

    t = spec.train
    cuda = cpu_workarounds.has_cuda()
    cpu_workarounds.check_cuda_features(t, cuda)
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        save_strategy="steps" if t.save else "no",  # "steps" also saves at the last step
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if (t.eval_steps and t.data.eval) else "no",
        eval_steps=t.eval_steps,
        logging_steps=t.logging_steps,
        seed=t.seed,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="no",  # its count is an all-gather + .item() per micro-batch: metrics count
        report_to=list(t.report_to) or "none",  # the trackers' variables: hpcft.train.tracking
        disable_tqdm=True,
        dataloader_num_workers=0,
        deepspeed=ds_config,
        **recipe_arguments(spec),
        **cpu_workarounds.trainer_device_args(cuda),
    )


def recipe_arguments(spec: JobSpec) -> dict[str, Any]:
    """The ``TrainingArguments`` keys of the recipe options (precision, schedule, logging, extras)."""
    t = spec.train
    return {
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "max_grad_norm": t.max_grad_norm,
        "weight_decay": t.weight_decay,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": int(t.warmup_steps) if t.warmup_steps >= 1 else t.warmup_steps,  # < 1: a ratio
        "gradient_checkpointing": t.gradient_checkpointing,
        # Non-reentrant checkpointing needs no inputs that require grad (frozen embeddings under LoRA).
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        "torch_compile": t.torch_compile,
        "neftune_noise_alpha": t.neftune_noise_alpha,
        "log_level": t.log_level,
        "log_level_replica": t.log_level_replica,
        "log_on_each_node": t.log_on_each_node,
    }


def load_ds_config(spec: JobSpec, run: Path) -> dict[str, Any] | None:
    """The job's DeepSpeed config: ``RUN/ds_config.json`` as planned (None: the job uses no DeepSpeed)."""
    path = run / DS_CONFIG_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if spec.train.zero or spec.train.deepspeed_config:
        raise ConfigError([f"{path}: missing; hpcft plan/submit write it for every DeepSpeed job (HINT: submit anew)"])
    return None


def deepspeed_setup(spec: JobSpec, run: Path) -> dict[str, Any] | None:
    """This rank's DeepSpeed config, ready before ``TrainingArguments`` (None: plain DDP).

    Adapts the config to a CPU-only node, expands and checks NVMe swap directories, and starts
    DeepSpeed's process group on CPU.
    """
    config = load_ds_config(spec, run)
    if config is None:
        return None
    cuda = cpu_workarounds.has_cuda()
    config, changes = cpu_workarounds.adapt_ds_config(config, cuda, generated=not spec.train.deepspeed_config)
    for change in changes:
        log.info("no CUDA on this node; DeepSpeed config: %s", change)
    dirs = expand_nvme_paths(config)
    if dirs:
        from hpcft.train.model import parameter_sizes

        check_nvme(dirs, nvme_swap_bytes(config, parameter_sizes(spec), spec.train.precision), run)
    cpu_workarounds.init_deepspeed_gloo(cuda)
    return config


def expand_nvme_paths(config: dict[str, Any]) -> list[Path]:
    """Expand ``$VARS``/``~`` in the config's NVMe paths on this node; return the distinct directories."""
    zero_cfg = config.get("zero_optimization") or {}
    dirs = []
    for key in ("offload_optimizer", "offload_param"):
        section = zero_cfg.get(key) or {}
        if section.get("device") == "nvme" and section.get("nvme_path"):
            section["nvme_path"] = os.path.expanduser(os.path.expandvars(section["nvme_path"]))
            if Path(section["nvme_path"]) not in dirs:
                dirs.append(Path(section["nvme_path"]))
    return dirs


def nvme_swap_bytes(config: dict[str, Any], sizes: list[int], precision: str) -> dict[str, int]:
    """Bytes this node writes to NVMe: per-rank partitions x ranks on the node, params and optimizer states."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("NPROC_PER_NODE") or world)
    optimizer_device, param_device = zero.config_offload_devices(config)
    numel = sum(sizes)
    out = {"params": 0, "optimizer": 0, "largest_partition": max(sizes, default=0) // world}
    if param_device == "nvme":
        out["params"] = numel // world * (2 if precision in ("bf16", "fp16") else 4) * local
    if optimizer_device == "nvme":
        out["optimizer"] = numel // world * 16 * local  # fp32 master weights, gradients, Adam's two moments
    return out


def check_nvme(dirs: list[Path], need: dict[str, int], run: Path) -> None:
    """Before training, on this node: each NVMe directory exists, is writable, has room; async_io builds.

    Warns when a directory shares the run directory's filesystem or sits on a network filesystem
    (swap traffic would go to the shared storage), and when partitions are too small to be swapped.
    """
    total = need["params"] + need["optimizer"]
    for d in dirs:
        problem = _nvme_dir_problem(d, total * 1.1)
        if problem:
            raise ConfigError([f"train.offload.nvme_path: {problem}"])
        fs = _filesystem_type(d)
        if d.stat().st_dev == run.stat().st_dev or fs in NETWORK_FS:
            log.warning(
                "NVMe swap directory %s is on the shared filesystem (%s; same device as the run directory: %s); "
                "swapping there loads the shared storage — use a node-local disk",
                d,
                fs or "unknown type",
                d.stat().st_dev == run.stat().st_dev,
            )
    if need["largest_partition"] * 4 < MIN_AIO_BYTES:
        log.warning(
            "NVMe offload: the largest per-rank partition is %d elements (< 1 MiB): DeepSpeed keeps tensors "
            "this small in memory and writes nothing to disk",
            need["largest_partition"],
        )
    _check_async_io()
    log.info("NVMe offload: %s, ~%.1f MiB per node", ", ".join(map(str, dirs)), total / 2**20)


def _nvme_dir_problem(d: Path, need_bytes: float) -> str | None:
    host = os.uname().nodename
    if not d.exists() and d.parent.is_dir():
        try:
            d.mkdir(exist_ok=True)  # the run's own folder under the node's NVMe directory (hpcft.plan.deepspeed)
        except OSError as e:
            return f"cannot create {d} on {host}: {e.strerror}"
    if not d.is_dir():
        return f"{d} does not exist on {host} (HINT: a node-local NVMe mount; create the directory first)"
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".hpcft-probe-"):
            pass
    except OSError as e:
        return f"{d} is not writable on {host}: {e.strerror}"
    free = shutil.disk_usage(d).free
    if free < need_bytes:
        return (
            f"{d} on {host} has {free / 2**30:.2f} GiB free, the swap files need ~{need_bytes / 2**30:.2f} GiB "
            "(HINT: free space, another disk, or offload less: train.offload.param=cpu)"
        )
    return None


def _filesystem_type(d: Path) -> str | None:
    """The type of the filesystem holding ``d`` (longest mount point prefix in /proc/mounts)."""
    best, fstype = "", None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    real = str(d.resolve())
    for line in lines:
        parts = line.split()
        inside = len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"))
        if inside and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def _check_async_io() -> None:
    """DeepSpeed's async_io op (libaio) must build here; NVMe offload cannot run without it."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if builder is None or not builder.is_compatible(verbose=False):
        raise ConfigError(
            [
                f"train.offload: NVMe offload needs DeepSpeed's async_io op, which cannot be built on "
                f"{os.uname().nodename} (HINT: install libaio: apt-get install libaio-dev, or dnf install libaio-devel)"
            ]
        )
    builder.load(verbose=False)
