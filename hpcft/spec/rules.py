"""Rules across the fields of a job: what no single value can break alone; pure.

Includes the ZeRO rules (stage, offload, NVMe path) and the LoRA rules. Each problem names its
dotted key, what was got and a HINT. ``spec_notes`` lists what a plan should point out.
"""

from __future__ import annotations

import functools
import re

from hpcft.launchers.base import shape_of
from hpcft.launchers.command import check_command
from hpcft.spec.model import JobSpec, TrainSpec, offload_devices, slurm_minutes
from hpcft.spec.secrets import secret_problems
from hpcft.spec.trackers import TRACKERS

_PDSH_SAFE_RE = re.compile(r"^[A-Za-z0-9_./+@%=:,-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The fields that name files or directories; a relative one is made absolute against its job file's folder.
PATH_KEYS = (
    "run.runs_dir",
    "train.model",
    "train.tokenizer",
    "train.output",
    "train.data.train",
    "train.data.eval",
    "launch.accelerate_config",
    "train.data.cache_dir",
    "train.deepspeed_config",
)
# Linux's limits (linux/limits.h): PATH_MAX 4096 bytes with the closing NUL, NAME_MAX 255 bytes between two
# slashes. Every system call given a longer path fails with ENAMETOOLONG, on any filesystem.
PATH_MAX_BYTES = 4095
NAME_MAX_BYTES = 255
_PATH_HINT = "HINT: a shorter path, e.g. a symbolic link to the directory"


def check_spec(spec: JobSpec) -> list[str]:
    """Cross-field rules that no single value can break alone."""
    problems = []
    launch, train = spec.launch, spec.train
    if not launch.command and not train.model:
        problems.append("train.model: required (a model directory), or give your own command after `--`")
    if not launch.command and not train.data.train:
        problems.append("train.data.train: required (a jsonl file of training samples)")
    problems += check_command(launch.command, zero=train.uses_deepspeed, launcher=launch.launcher)
    problems += [f"train.report_to: {name!r} is not one of {', '.join(TRACKERS)}" for name in train.report_to
                 if name not in TRACKERS]  # fmt: skip
    problems += _container_problems(spec, head_node=shape_of(launch.launcher) == "head_node")
    if launch.launcher == "none" and not launch.command:
        problems.append("launch.launcher: none runs your own command once per node; give one after `--` "
                        "(HINT: for hpcft's trainer choose torchrun, deepspeed or accelerate)")  # fmt: skip
    if spec.launch.backend == "local" and spec.resources.nodes > 1:
        problems.append(
            f"resources.nodes: the local backend runs on this machine only, got {spec.resources.nodes} "
            "(HINT: use --backend sbatch on a SLURM cluster, or --nodes 1)"
        )
    for key, value in (("run.name", spec.run.name), ("run.runs_dir", spec.run.runs_dir)):
        bad = sorted({ch for ch in value if ch in "\\\n\r\0"})
        if bad:
            problems.append(
                f"{key}: may not contain {', '.join(map(repr, bad))} (SLURM cannot name files with it), got {value!r}"
            )
    if launch.backend == "submitit" and launch.launcher in ("deepspeed-openmpi", "deepspeed-mvapich"):
        problems.append(
            f"launch.launcher: {launch.launcher} cannot run under the submitit backend: submitit starts every "
            "task inside an srun step, and mpirun inside a step sees only that step's one task per node and "
            "cannot place the ranks (HINT: use --backend sbatch, or --launcher deepspeed / deepspeed-pdsh)"
        )
    if launch.backend in ("submitit", "local") and spec.run.restart == "chain":
        problems.append(
            f"run.restart: chain submits the run's job.sbatch again after each preemption or time limit, and the "
            f"{launch.backend} backend writes none (HINT: --backend sbatch, or run.restart: requeue)"
        )
    if launch.launcher == "deepspeed-pdsh":
        for key, value in (("run.name", spec.run.name), ("run.runs_dir", spec.run.runs_dir)):
            if not _PDSH_SAFE_RE.match(value):
                problems.append(
                    f"{key}: deepspeed-pdsh needs a run directory path without blanks or shell characters, "
                    f"got {value!r} (DeepSpeed's PDSHRunner pastes `cd <dir>` unquoted into the remote shell; "
                    "HINT: rename it, or use --launcher deepspeed, which needs no ssh)"
                )
    problems += _check_signal_lead(spec) + _check_shrink(spec) + _check_save_bounds(spec.train)
    if not spec.run.name.strip():
        problems.append("run.name: must not be empty")
    for name, value in launch.env.items():
        if not _ENV_NAME_RE.match(name):
            problems.append(f"launch.env.{name}: not a valid environment variable name")
        elif launch.launcher == "deepspeed-pdsh" and value != value.strip():
            problems.append(
                f"launch.env.{name}: leading or trailing blanks cannot reach deepspeed-pdsh ranks (DeepSpeed's "
                "runner strips values; HINT: remove them, or --launcher deepspeed)"
            )
    for name in launch.env_passthrough:
        if not _ENV_NAME_RE.match(name):
            problems.append(f"launch.env_passthrough: {name!r} is not a valid environment variable name")
    return problems + _path_length_problems(spec) + secret_problems(spec) + check_recipe(train)


def path_length_problem(path: str) -> str | None:
    """Why no system call can take ``path`` (longer than Linux's PATH_MAX or NAME_MAX), or None."""
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX_BYTES:
        return f"path too long ({len(path)} characters; a path holds at most {PATH_MAX_BYTES} bytes) ({_PATH_HINT})"
    name = max(path.split("/"), key=lambda part: len(part.encode("utf-8", "surrogatepass")))
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        return (f"a name in the path is too long ({len(name)} characters between two slashes, at most "
                f"{NAME_MAX_BYTES} bytes: {name[:24]}…) ({_PATH_HINT})")  # fmt: skip
    return None


def _path_length_problems(spec: JobSpec) -> list[str]:
    """Paths no system call can take, named by their field (checked before any file is looked at)."""
    paths = [(key, functools.reduce(getattr, key.split("."), spec)) for key in PATH_KEYS]
    paths += [("launch.python", spec.launch.python), ("train.offload.nvme_path", spec.train.offload.nvme_path)]
    paths += [("launch.command", spec.launch.command[0])] if spec.launch.command else []
    problems = []
    for key, value in paths:
        problem = path_length_problem(value) if isinstance(value, str) else None
        if problem:
            problems.append(f"{key}: {problem}")
    run_dir = f"{spec.run.name.replace('/', '_')}-YYYYmmdd-HHMMSS".encode("utf-8", "surrogatepass")
    if len(run_dir) > NAME_MAX_BYTES:
        problems.append(f"run.name: too long for the run directory's name NAME-YYYYmmdd-HHMMSS ({len(run_dir)} bytes, "
                        f"at most {NAME_MAX_BYTES}) (HINT: a shorter run.name)")  # fmt: skip
    return problems


def _check_signal_lead(spec: JobSpec) -> list[str]:
    """A warning lead of half the time limit or more would warn the job as it starts, every segment."""
    lead, time = spec.run.signal_lead, spec.resources.time
    if not (lead and time and spec.run.requeue) or 2 * lead < slurm_minutes(time) * 60:
        return []
    return [
        f"run.signal_lead: a {lead} s warning for a time limit of {time} (resources.time) would come as the job "
        "starts, and every segment would checkpoint after a few steps and requeue (HINT: a lead under half the "
        "time limit, or a longer --time)"
    ]


def _check_save_bounds(train: TrainSpec) -> list[str]:
    """``save_steps: auto`` chooses within ``save_steps_min`` … ``save_steps_max``."""
    if train.save_steps_min <= train.save_steps_max:
        return []
    return [f"train.save_steps_min ({train.save_steps_min}) is above train.save_steps_max ({train.save_steps_max}) "
            "(HINT: swap them)"]  # fmt: skip


def _check_shrink(spec: JobSpec) -> list[str]:
    """``resources.min_nodes`` and ``run.shrink_after`` go together, under SLURM's batch scripts."""
    low, after, nodes = spec.resources.min_nodes, spec.run.shrink_after, spec.resources.nodes
    if low is None and after is None:
        return []
    if low is not None and low > nodes:
        return [f"resources.min_nodes: {low} is more than resources.nodes ({nodes}) (HINT: at most {nodes})"]
    hint = f"HINT: e.g. -o resources.min_nodes={max(1, nodes - 1)} -o run.shrink_after=600"
    if low is None:
        return [f"run.shrink_after: has no effect without resources.min_nodes: after a node loss a job continues "
                f"on fewer nodes when both are set ({hint})"]  # fmt: skip
    if after is None and low < nodes and spec.survivor_nodes is None:
        return [f"resources.min_nodes: has no effect here: the ranks left after a node loss train on in the job "
                f"only with hpcft's trainer under torchrun (c10d) without DeepSpeed, and only where every world of "
                f"{low} to {nodes} nodes can share the global batch; with run.shrink_after the job continues on "
                f"fewer nodes once SLURM has removed the lost one ({hint})"]  # fmt: skip
    if after is not None and spec.launch.backend in ("local", "submitit"):
        return [f"run.shrink_after: needs the sbatch backend (its batch script continues on the nodes left); "
                f"launch.backend is {spec.launch.backend} (HINT: --backend sbatch)"]  # fmt: skip
    return []


def check_recipe(train: TrainSpec) -> list[str]:
    """Rules of the training recipe: DeepSpeed stage/offload/precision (``check_zero``), LoRA."""
    problems = check_zero(train)
    if train.lora.load_in_4bit and not train.lora.enabled:
        problems.append(
            "train.lora.load_in_4bit: QLoRA trains LoRA adapters on a frozen 4-bit model; 4-bit weights cannot be "
            "fully fine-tuned (HINT: also set train.lora.enabled=true)"
        )
    if train.lora.enabled and not train.lora.target_modules:
        problems.append("train.lora.target_modules: must name at least one module, or all-linear")
    return problems


def spec_notes(spec: JobSpec) -> list[str]:
    """Things a plan should point out that depend on the machine the job lands on (no file or probe here)."""
    notes = []
    if not spec.launch.command and spec.train.lora.load_in_4bit:
        notes.append(
            "train.lora.load_in_4bit (QLoRA) needs CUDA GPUs and bitsandbytes on every node; on a node "
            "without CUDA the trainer stops at start with a ConfigError."
        )
    if not spec.launch.command and spec.train.precision == "fp16":
        notes.append("train.precision fp16 needs CUDA GPUs; on CPU-only nodes the trainer refuses it (use bf16).")
    ranks = spec.resources.gpus_per_node if spec.launch.launcher != "none" else 1
    if spec.resources.cpus_per_task is None and spec.launch.backend != "local" and ranks > 1:
        notes.append(f"resources.cpus_per_task is not set: SLURM gives the job its partition's default CPUs on each "
                     f"node (often 1, or a few per GPU); where cores are constrained, the node's {ranks} ranks and "
                     f"their data loaders share them (HINT: resources.cpus_per_task: {4 * ranks})")  # fmt: skip
    if spec.survivor_nodes:
        notes.append(f"after a node loss the ranks of the {spec.survivor_nodes}+ nodes left train on at once, with the "
                     "global batch kept, until SLURM ends the job for the node (or it continues without it: "
                     "run.shrink_after)")  # fmt: skip
    if spec.shrinks:
        notes.append(f"after a node loss the job waits {spec.run.shrink_after} s for the node, then continues on the "
                     f"{spec.resources.min_nodes}+ nodes left (--no-kill); where the first node is lost, SLURM ends "
                     "the job and requeues it at full size")  # fmt: skip
    return notes


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


def _container_problems(spec: JobSpec, head_node: bool) -> list[str]:
    """What is wrong with ``launch.container`` (empty when fine)."""
    c = spec.launch.container
    if not c.enabled:
        return []
    problems = []
    if not c.image:
        problems.append(f"launch.container.image: required with runtime {c.runtime}")
    elif c.runtime == "pyxis" and "," in c.image:
        problems.append(f"launch.container.image: may not contain ',' under pyxis, got {c.image!r}")
    for m in c.mounts:
        parts = m.split(":")
        if "," in m or not 1 <= len(parts) <= 3 or not all(p.startswith("/") for p in parts[:2]):
            problems.append(f"launch.container.mounts: {m!r} is not SRC[:DST[:OPTIONS]] with absolute paths "
                            "and no ','")  # fmt: skip
    if head_node:
        problems.append(f"launch.container: the {spec.launch.launcher} launcher starts the other nodes' processes "
                        "over ssh, outside the container (HINT: torchrun, deepspeed, accelerate or srun)")  # fmt: skip
    if spec.launch.backend not in ("sbatch", "auto"):
        problems.append(f"launch.container: runs through srun in the batch script; backend {spec.launch.backend} "
                        "has none (HINT: --backend sbatch)")  # fmt: skip
    return problems
