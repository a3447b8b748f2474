"""The job description as frozen dataclasses, and the per-value rules (types, ranges, choices).

``parse_spec`` turns an already merged mapping into a ``JobSpec`` plus the problems of single
values (unknown keys with close matches, wrong types, bad values), each with its dotted path.
Rules across fields live in ``spec.rules``; ``spec.io.build_spec`` applies both. Reads no files.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from hpcft.backends.base import BACKENDS as BACKEND_REGISTRY
from hpcft.launchers.base import LAUNCHERS as LAUNCHER_REGISTRY
from hpcft.spec.coerce import coerce, show

# The choices come from the extension points' registries (one table each, no code imported).
BACKENDS = ("auto", *BACKEND_REGISTRY)
LAUNCHERS = tuple(LAUNCHER_REGISTRY)
DATA_FORMATS = ("auto", "alpaca", "chat", "text")

# sbatch --time accepts: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (man sbatch).
_TIME_RE = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_HOSTLIST_RE = re.compile(r"^[A-Za-z0-9_.\[\],-]+$")


def _opt(default: Any = None, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSpec:
    """Where and under which name a run lives."""

    name: str = _opt("job", help="run name; the run directory is RUNS_DIR/NAME-TIMESTAMP")
    runs_dir: str = _opt("hpcft-runs", help="directory on the shared filesystem holding runs")
    requeue: bool = _opt(True, help="sbatch: checkpoint and requeue at the time limit / on preemption")
    restart: Literal["requeue", "chain"] = _opt(
        "requeue", help="how the run continues: requeue the job, or (sites without requeue) chain a new dependent job"
    )
    signal_lead: int | None = _opt(
        None,
        min=30,
        help="seconds before the time limit to ask for a checkpoint (default: from measured saves; "
        "a slower save measured later raises it)",
    )
    max_failures: int = _opt(
        2, min=0, help="restarts allowed after crashes (killed ranks, node loss), in the job and by requeue together"
    )
    restart_in_job: bool = _opt(
        True, help="a crashed rank restarts every rank inside the allocation (no requeue, no queue wait)"
    )
    max_preemptions: int | None = _opt(None, min=0, help="requeues after preemptions and time limits "
                                       "(checkpointed: no failure); default unlimited")  # fmt: skip
    max_stalls: int = _opt(5, min=1, help="job segments in a row that may start from the same checkpoint (none "
                           "committed: crash or node-failure loops…) before the run stops")  # fmt: skip
    hang_timeout: int = _opt(90, min=0, help="seconds a training step may take (or hang_step_factor × the measured "
                             "step time, if longer) before its rank is hung; 0: off")  # fmt: skip
    hang_step_factor: float = _opt(20.0, min=1, help="a hung step is this many times the rank's measured step time")
    hang_phase_timeout: int = _opt(1800, min=1, help="seconds for the first step, an eval, the end, a save "
                                   "(or 3 × the last measured one)")  # fmt: skip
    straggler_margin: float | None = _opt(1.0, min=0.01, help="name a node taking this much longer per step than "
                                          "the others' median a straggler (1.0: twice as long); null: off")  # fmt: skip
    straggler_steps: int = _opt(50, min=1, help="steps a node must stay that slow before it is named (event straggler)")
    avoid_lemons: bool = _opt(True, help="requeues and new jobs exclude the nodes recent faults named (hpcft nodes)")
    shrink_after: int | None = _opt(None, min=0, help="seconds a job waits for a lost node to come back before "
                                    "it continues on the nodes left (≥ resources.min_nodes); default off")  # fmt: skip


@dataclass(frozen=True)
class ResourceSpec:
    """What to ask SLURM for; field names are sbatch's long options in snake_case."""

    nodes: int = _opt(1, min=1, max=100_000, help="number of nodes")
    min_nodes: int | None = _opt(None, min=1, help="after a node loss, the ranks left on this many nodes or more train "
                                 "on at once (hpcft's trainer, no ZeRO), and with run.shrink_after the job continues "
                                 "without the node; default off")  # fmt: skip
    gpus_per_node: int = _opt(0, min=0, max=1024, help="GPUs per node; on a machine without GPUs, processes per node")
    cpus_per_task: int | None = _opt(None, min=1, help="CPUs for the one task per node")
    time: str | None = _opt(None, pattern=_TIME_RE, expect="sbatch time such as 90, 4:00:00 or 1-12:00:00")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = _opt(None, pattern=_MEM_RE, expect="a size such as 64G or 500000M")
    exclude: str | None = _opt(None, pattern=_HOSTLIST_RE, expect="a SLURM host list such as node[3-4],gpu7",
                               help="nodes never to run on (sbatch --exclude); lemon nodes are added")  # fmt: skip
    exclusive: bool = False
    extra_sbatch: tuple[str, ...] = _opt((), help="extra sbatch options, e.g. ['--reservation=foo']")


@dataclass(frozen=True)
class ContainerSpec:
    """Run every node's processes in a container image (``hpcft.plan.container``)."""

    runtime: Literal["none", "apptainer", "pyxis"] = _opt(
        "none", help="apptainer: `apptainer exec --nv IMAGE …`; pyxis: srun --container-image (enroot)"
    )
    image: str | None = _opt(None, help="apptainer: a .sif file or docker:// URI; pyxis: e.g. nvcr.io#nvidia/pytorch")
    mounts: tuple[str, ...] = _opt((), help="SRC[:DST] absolute paths to mount besides the runs directory")
    python: str = _opt("python3", help="python inside the image (hpcft must be installed there)")

    @property
    def enabled(self) -> bool:
        """Whether the job's nodes run in a container image."""
        return self.runtime != "none"


@dataclass(frozen=True)
class LaunchSpec:
    """How the job reaches the nodes and starts its processes."""

    backend: str = _opt("auto", choices=BACKENDS, help="auto = sbatch if on PATH, else local")
    launcher: str = _opt("torchrun", choices=LAUNCHERS, help="deepspeed = the deepspeed launcher per node without ssh")
    rdzv: Literal["c10d", "static"] = _opt("c10d", help="torchrun rendezvous backend")
    network_interface: str | None = _opt(None, help="deepspeed-openmpi: interface or CIDR (default: master's subnet)")
    accelerate_config: str | None = _opt(None, help="your own accelerate config YAML (launcher accelerate)")
    python: str | None = _opt(None, help="python on every node (default: the one running hpcft)")
    setup: tuple[str, ...] = _opt((), multiline=True, help="shell lines run in the batch script before srun")
    env: dict[str, str] = field(
        default_factory=lambda: MappingProxyType({}), metadata={"help": "environment for every rank"}
    )
    env_passthrough: tuple[str, ...] = _opt((), help="names of variables (e.g. secrets) taken from the submit env")
    hf_integration: bool = _opt(
        True, help="your command's transformers.Trainer reports progress, checkpoints on warnings and resumes"
    )
    warm_start: bool = _opt(
        True, help="torchrun with hpcft's trainer: import the stack once per node and fork every rank from it"
    )
    command: tuple[str, ...] = _opt(
        (),
        help="your own trainer instead of hpcft's: a .py file, -m module or a program, with its arguments (placeholders"
        " {run_dir} {ds_config} {accelerate_config} {output_dir} {resume_checkpoint} {node_rank} {nnodes})",
    )
    container: ContainerSpec = field(default_factory=ContainerSpec)


@dataclass(frozen=True)
class DataSpec:
    """Training data files."""

    train: str | None = _opt(None, help="training samples: .jsonl/.json/.parquet/.csv or a save_to_disk directory")
    eval: str | None = _opt(None, help="optional evaluation samples, same kinds as train")
    format: Literal["auto", "alpaca", "chat", "text"] = "auto"
    completion_only: bool = _opt(True, help="loss only on alpaca outputs / chat assistant turns; false = every token")
    cache_dir: str | None = _opt(None, help="tokenized-data cache on the shared FS (default: RUNS_DIR/.cache/data)")
    cache_wait_minutes: int = _opt(240, min=1, help="how long other ranks wait for rank 0 to build the cache")


@dataclass(frozen=True)
class OffloadSpec:
    """What DeepSpeed ZeRO keeps out of accelerator memory, and where (``offload_optimizer``/``offload_param``)."""

    device: Literal["none", "cpu", "nvme"] = _opt(
        "none", help="--offload: the optimizer state (ZeRO >= 1) and, under ZeRO-3, the parameters too"
    )
    optimizer: Literal["none", "cpu", "nvme"] | None = _opt(None, help="optimizer state only (default: device)")
    param: Literal["none", "cpu", "nvme"] | None = _opt(
        None, help="parameters only, ZeRO-3 (default: device under ZeRO-3)"
    )
    nvme_path: str | None = _opt(None, help="node-local NVMe directory (absolute; $VARS expand on the node)")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (peft) instead of full fine-tuning; QLoRA with ``load_in_4bit``."""

    enabled: bool = _opt(False, help="train LoRA adapters; the base model stays frozen")
    r: int = _opt(16, min=1, help="adapter rank")
    alpha: float = _opt(32.0, min=0.0, help="adapter scaling is alpha / r")
    dropout: float = _opt(0.05, min=0.0, max=1.0)
    target_modules: tuple[str, ...] = _opt(("all-linear",), help="module names to adapt, or all-linear")
    load_in_4bit: bool = _opt(False, help="QLoRA: load the base model 4-bit NF4 (bitsandbytes; needs CUDA)")


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts models (Mixtral, Qwen-MoE, ...): router loss and ZeRO-3 handling."""

    router_aux_loss: bool = _opt(True, help="add the router load-balancing loss (output_router_logits); logged")
    router_aux_loss_coef: float | None = _opt(None, min=0.0, help="its weight (default: the model config's)")
    zero3_leaf: bool = _opt(True, help="ZeRO-3: fetch each MoE block's experts as one unit (set_z3_leaf_modules)")


@dataclass(frozen=True)
class TrainSpec:
    """The fine-tuning recipe run by ``hpcft.train.main``."""

    model: str | None = _opt(None, help="model directory loadable by AutoModelForCausalLM")
    tokenizer: str | None = _opt(None, help="tokenizer directory (default: the model's)")
    data: DataSpec = field(default_factory=DataSpec)
    output: str | None = _opt(None, help="checkpoint directory (default: RUN/checkpoints)")
    max_steps: int = _opt(-1, min=-1, help="optimizer steps; -1 = run `epochs` epochs")
    epochs: float = _opt(1.0, min=0.0)
    lr: float = _opt(2e-5, min=0.0)
    batch_size: int = _opt(1, min=1, help="micro-batch per process")
    grad_accum: int = _opt(1, min=1)
    seq_len: int = _opt(512, min=8)
    packing: bool = _opt(False, help="pack samples into rows of seq_len tokens; attention stays inside each sample")
    save_steps: int | Literal["auto"] = _opt(
        100,
        min=1,
        help="steps between checkpoints; auto: Daly's optimum for the run's own save time and fault "
        "rate, chosen again at each job start, within save_steps_min/max (hpcft's trainer)",
    )
    save_steps_min: int = _opt(10, min=1, help="save_steps: auto: at least this many steps between saves")
    save_steps_max: int = _opt(1000, min=1, help="save_steps: auto: at most this many (and the first job's)")
    save: bool = _opt(True, help="false: no checkpoint and no final model (benchmarks: hpcft bench scale)")
    save_total_limit: int | None = _opt(None, min=1)
    eval_steps: int | None = _opt(None, min=1)
    logging_steps: int = _opt(1, min=1)
    seed: int = 42
    zero: int = _opt(0, min=0, max=3, help="DeepSpeed ZeRO stage; 0 = plain DDP")
    offload: OffloadSpec = field(default_factory=OffloadSpec)
    zero_init: bool = _opt(True, help="ZeRO-3: build the model already partitioned (deepspeed.zero.Init)")
    gather_16bit_on_save: bool = _opt(True, help="ZeRO-3: save full 16-bit weights (model.safetensors)")
    deepspeed_config: str | None = _opt(None, help="your own DeepSpeed JSON; train.zero/offload may only repeat it")
    precision: Literal["fp32", "bf16", "fp16"] = _opt("fp32", help="bf16/fp16 mixed precision; fp16 needs CUDA")
    max_grad_norm: float = _opt(1.0, min=0.0, help="gradient clipping; 0 = off")
    weight_decay: float = _opt(0.0, min=0.0)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "linear"
    warmup_steps: float = _opt(0.0, min=0.0, help="linear warmup: steps, or a fraction (< 1) of all steps")
    gradient_checkpointing: bool = _opt(False, help="recompute activations in backward: less memory, more time")
    torch_compile: bool = _opt(False, help="torch.compile the model")
    neftune_noise_alpha: float | None = _opt(None, min=0.0, help="NEFTune noise on the embeddings, e.g. 5")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = _opt("info", help="main process")
    log_level_replica: Literal["debug", "info", "warning", "error", "critical"] = _opt("warning", help="other ranks")
    log_on_each_node: bool = _opt(False, help="log_level for local rank 0 of every node, not only global rank 0")
    lora: LoraSpec = field(default_factory=LoraSpec)
    moe: MoESpec = field(default_factory=MoESpec)
    report_to: tuple[str, ...] = _opt((), help="experiment trackers: tensorboard, wandb, mlflow (see spec.trackers)")
    wandb_project: str | None = _opt(None, help="W&B project (default: run.name); offline unless WANDB_MODE is set")
    mlflow_uri: str | None = _opt(None, help="MLflow tracking URI (default: a file store RUN/mlruns)")

    @property
    def uses_deepspeed(self) -> bool:
        """Whether the job has a DeepSpeed config: a ZeRO stage, or the user's own JSON."""
        return self.zero > 0 or bool(self.deepspeed_config)


@dataclass(frozen=True)
class JobSpec:
    """One fine-tuning job: the resolved, validated input of every later step."""

    run: RunSpec = field(default_factory=RunSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    @property
    def shrinks(self) -> bool:
        """Whether a job that loses a node may continue on fewer (``resources.min_nodes``, ``run.shrink_after``)."""
        low = self.resources.min_nodes or self.resources.nodes
        return self.run.shrink_after is not None and low < self.resources.nodes

    @property
    def ranks(self) -> int:
        """Ranks of the job as planned: nodes × GPUs per node (processes per node on CPU)."""
        return self.resources.nodes * (self.resources.gpus_per_node or 1)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over the whole job as planned."""
        return self.train.batch_size * self.train.grad_accum * self.ranks

    @property
    def survivor_nodes(self) -> int | None:
        """The fewest nodes whose ranks train on in the job after a node loss, at once (``resources.min_nodes``).

        SLURM notices a dead node only after SlurmdTimeout (300 s by default), and until then the job's other
        nodes would wait for it. Where this is not None, torchrun's agents form a world of the nodes left (c10d
        rendezvous ``--nnodes=LOW:N``) and hpcft's trainer keeps the global batch by accumulating more
        (``hpcft.train.main.for_world``), so the nodes left train on until SLURM ends the job (its requeue gets
        all of them again) or, with ``run.shrink_after``, goes on without the node. Only where every world from
        LOW to N nodes can share the global batch, and only for hpcft's trainer under torchrun without DeepSpeed
        (a ZeRO config fixes its batch per rank; a user's command sizes its batch itself); else None: the
        world stays fixed.
        """
        low, nodes, launch = self.resources.min_nodes, self.resources.nodes, self.launch
        fixed = (launch.command or self.train.uses_deepspeed or launch.launcher != "torchrun" or launch.rdzv != "c10d"
                 or not self.run.restart_in_job)  # fmt: skip
        if low is None or fixed:
            return None
        procs, batch = self.resources.gpus_per_node or 1, self.global_batch
        while low < nodes and any(batch % (k * procs) for k in range(low, nodes)):
            low += 1
        return low if low < nodes else None


def split_global_batch(batch: int, micro: int, world: int) -> tuple[int, int]:
    """(micro-batch, accumulation) that make a global batch of ``batch`` samples on ``world`` ranks, the micro-batch
    as large as ``micro`` at most; pure. ``batch`` must be a multiple of ``world``."""
    per_rank = batch // world  # micro-batch × accumulation
    fit = max(d for d in range(1, min(micro, per_rank) + 1) if per_rank % d == 0)
    return fit, per_rank // fit


def rebatch(train: TrainSpec, batch: int, world: int) -> tuple[dict[str, int], list[str]]:
    """``train.batch_size``/``grad_accum`` for a global batch of ``batch`` on ``world`` ranks (``split_global_batch``),
    and what changed, as ``train.KEY OLD → NEW``; pure."""
    micro, accum = split_global_batch(batch, train.batch_size, world)
    new = {"batch_size": micro, "grad_accum": accum}
    return new, [f"train.{k} {getattr(train, k)} → {v}" for k, v in new.items() if getattr(train, k) != v]


def spec_to_dict(spec: Any) -> Any:
    """Plain dict/list form of a spec (for YAML), the inverse of ``build_spec``."""
    if dataclasses.is_dataclass(spec):
        return {f.name: spec_to_dict(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    if isinstance(spec, tuple | list):
        return [spec_to_dict(v) for v in spec]
    if isinstance(spec, typing.Mapping):
        return {k: spec_to_dict(v) for k, v in spec.items()}
    return spec


def slurm_minutes(time: str) -> int:
    """An sbatch time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes, rounded up."""
    days, _, rest = time.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = ([*parts, 0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + m * 60 + s
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
        seconds = h * 3600 + m * 60 + s
    return -(-seconds // 60)


def offload_devices(train: TrainSpec) -> tuple[str, str]:
    """(optimizer, param) offload devices: ``offload.device`` fills the optimizer, and under ZeRO-3 the params.

    The one derivation from the spec; ``plan.deepspeed.config_offload_devices`` reads a DeepSpeed config.
    """
    o = train.offload
    optimizer = o.optimizer if o.optimizer is not None else o.device
    param = o.param if o.param is not None else (o.device if train.zero == 3 else "none")
    return optimizer, param


def parse_spec(data: typing.Mapping[str, Any]) -> tuple[JobSpec, list[str]]:
    """The ``JobSpec`` of ``data`` and the problems of its single values (empty: every value is valid)."""
    problems: list[str] = []
    return _build(JobSpec, data, "", problems), problems


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a spec class (``get_type_hints`` compiles each annotation: cached)."""
    return typing.get_type_hints(cls)


def field_paths(cls: type = JobSpec, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. ``train.data.train`` (for help and close matches)."""
    out = []
    for f in dataclasses.fields(cls):
        ftype = _hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            out += field_paths(ftype, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    where = path.rstrip(".") or "top level"
    if data is None:
        data = {}
    if not isinstance(data, typing.Mapping):
        problems.append(f"{where}: expected a mapping of keys, got {show(data)}")
        return cls()
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(_unknown_key(str(key), path, list(fields)))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype):
            values[name] = _build(ftype, data[name], f"{path}{name}.", problems)
        else:
            ok, value = coerce(data[name], ftype, f"{path}{name}", f.metadata, problems)
            if ok:
                values[name] = value
    return cls(**values)


# Keys of earlier hpcft versions → what replaced them (named in the error; spec.io migrates run specs).
RENAMED = {
    "launch.script": "launch.command: [SCRIPT, ARGS...]",
    "launch.script_args": "launch.command: [SCRIPT, ARGS...]",
    "launch.max_restarts": "run.max_failures (in-job restarts and requeues share it; run.restart_in_job)",
}


def _unknown_key(key: str, path: str, known: list[str]) -> str:
    if f"{path}{key}" in RENAMED:
        return f"{path}{key}: replaced by {RENAMED[path + key]}"
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(path + c for c in close)}?" if close else f"known keys: {', '.join(known)}"
    return f"{path}{key}: unknown key ({hint})"
