"""``hpcft config``: write an accelerate config YAML, from flags or by asking like ``accelerate config``.

One table of questions drives both ways in: every question is a ``--flag`` of ``hpcft config`` and,
at a terminal, a prompt asked only when it applies (e.g. ZeRO questions only for DEEPSPEED). It
covers the walk-through of ``accelerate config`` for a cluster: machines, machine rank, main
process IP/port, same network, rendezvous backend, torch dynamo (backend, mode, fullgraph, dynamic),
DeepSpeed (stage, offload of optimizer/parameters to none/cpu/nvme, gradient accumulation, clipping,
16-bit save, zero.Init, multi-node launcher), FSDP (version, sharding strategy, CPU offload,
auto-wrap policy, state-dict type), GPUs, mixed precision (no/fp16/bf16/fp8). ``to_config`` turns
answers into accelerate's own YAML keys; pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

A = Mapping[str, Any]


@dataclass(frozen=True)
class Question:
    """One question: its answer key, prompt, kind (str/int/float/bool/choice), default and condition."""

    key: str
    prompt: str
    kind: str = "str"
    default: Any = None
    choices: tuple[str, ...] = ()
    when: Callable[[A], bool] = lambda a: True
    low: float | None = None  # int/float answers: the smallest and largest accepted
    high: float | None = None


def _ds(a: A) -> bool:
    return a.get("distributed_type") == "DEEPSPEED"


def _fsdp(a: A) -> bool:
    return a.get("distributed_type") == "FSDP"


def _multi(a: A) -> bool:
    return int(a.get("num_machines", 1)) > 1


QUESTIONS: tuple[Question, ...] = (
    Question("distributed_type", "Which kind of distributed training?", "choice", "MULTI_GPU",
             ("MULTI_GPU", "DEEPSPEED", "FSDP", "MULTI_CPU", "NO")),
    Question("num_machines", "How many machines (nodes)?", "int", 1, low=1),
    Question("machine_rank", "What is the rank of this machine? (hpcft passes it per node)", "int", 0, when=_multi,
             low=0),
    Question("main_process_ip", "What is the IP address of the main machine? (hpcft passes it)", "str", "",
             when=_multi),
    Question("main_process_port", "What port does the main process use? (hpcft passes it)", "int", 29500,
             when=_multi, low=1, high=65535),
    Question("same_network", "Are all machines on the same local network?", "bool", True, when=_multi),
    Question("rdzv_backend", "Which rendezvous backend?", "choice", "static", ("static", "c10d"), when=_multi),
    Question("use_cpu", "Run on CPU only?", "bool", False),
    Question("dynamo", "Optimize the script with torch dynamo?", "bool", False),
    Question("dynamo_backend", "Which dynamo backend?", "choice", "INDUCTOR",
             ("INDUCTOR", "EAGER", "AOT_EAGER", "CUDAGRAPHS", "IPEX", "TVM"), when=lambda a: a.get("dynamo")),
    Question("dynamo_mode", "Which torch.compile mode?", "choice", "default",
             ("default", "reduce-overhead", "max-autotune"), when=lambda a: a.get("dynamo")),
    Question("dynamo_use_fullgraph", "Compile the whole model as one graph (fullgraph)?", "bool", False,
             when=lambda a: a.get("dynamo")),
    Question("dynamo_use_dynamic", "Enable dynamic shape tracing?", "bool", False, when=lambda a: a.get("dynamo")),
    Question("deepspeed_config_file", "Path of your own DeepSpeed JSON (empty: answer the questions)", "str", "",
             when=_ds),
    Question("zero_stage", "DeepSpeed ZeRO stage?", "choice", "2", ("0", "1", "2", "3"),
             when=lambda a: _ds(a) and not a.get("deepspeed_config_file")),
    Question("offload_optimizer_device", "Where to offload optimizer states?", "choice", "none",
             ("none", "cpu", "nvme"), when=lambda a: _ds(a) and not a.get("deepspeed_config_file")),
    Question("offload_optimizer_nvme_path", "NVMe path for optimizer states?", "str", "/local_nvme",
             when=lambda a: _ds(a) and a.get("offload_optimizer_device") == "nvme"),
    Question("offload_param_device", "Where to offload parameters (ZeRO-3)?", "choice", "none",
             ("none", "cpu", "nvme"), when=lambda a: _ds(a) and str(a.get("zero_stage")) == "3"),
    Question("offload_param_nvme_path", "NVMe path for parameters?", "str", "/local_nvme",
             when=lambda a: _ds(a) and a.get("offload_param_device") == "nvme"),
    Question("gradient_accumulation_steps", "Gradient accumulation steps?", "int", 1, low=1,
             when=lambda a: _ds(a) and not a.get("deepspeed_config_file")),
    Question("gradient_clipping", "Gradient clipping value (0: none)?", "float", 1.0, low=0,
             when=lambda a: _ds(a) and not a.get("deepspeed_config_file")),
    Question("zero3_save_16bit_model", "Save 16-bit model weights under ZeRO-3?", "bool", True,
             when=lambda a: _ds(a) and str(a.get("zero_stage")) == "3"),
    Question("zero3_init_flag", "Use deepspeed.zero.Init to build huge models partitioned?", "bool", True,
             when=lambda a: _ds(a) and str(a.get("zero_stage")) == "3"),
    Question("deepspeed_multinode_launcher", "DeepSpeed multi-node launcher?", "choice", "standard",
             ("standard", "pdsh", "openmpi", "mvapich", "mpich", "impi", "nossh"), when=lambda a: _ds(a) and _multi(a)),
    Question("fsdp_version", "FSDP version?", "choice", "2", ("1", "2"), when=_fsdp),
    Question("fsdp_sharding_strategy", "FSDP sharding strategy?", "choice", "FULL_SHARD",
             ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"), when=_fsdp),
    Question("fsdp_offload_params", "Offload parameters and gradients to CPU?", "bool", False, when=_fsdp),
    Question("fsdp_auto_wrap_policy", "FSDP auto-wrap policy?", "choice", "TRANSFORMER_BASED_WRAP",
             ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"), when=_fsdp),
    Question("fsdp_transformer_layer_cls_to_wrap", "Layer class names to wrap (empty: the model's _no_split_modules)",
             "str", "", when=lambda a: _fsdp(a) and a.get("fsdp_auto_wrap_policy") == "TRANSFORMER_BASED_WRAP"),
    Question("fsdp_min_num_params", "Minimum parameters per wrapped unit?", "int", 100_000_000, low=1,
             when=lambda a: _fsdp(a) and a.get("fsdp_auto_wrap_policy") == "SIZE_BASED_WRAP"),
    Question("fsdp_state_dict_type", "FSDP state-dict type for checkpoints?", "choice", "SHARDED_STATE_DICT",
             ("FULL_STATE_DICT", "SHARDED_STATE_DICT"), when=_fsdp),
    Question("num_processes", "How many processes in total (GPUs × machines)? (hpcft passes it)", "int", 1, low=1,
             when=lambda a: a.get("distributed_type") != "NO"),
    Question("gpu_ids", "Which GPU ids per machine ('all' or 0,1,…)?", "str", "all",
             when=lambda a: not a.get("use_cpu")),
    Question("mixed_precision", "Mixed precision?", "choice", "no", ("no", "fp16", "bf16", "fp8")),
)  # fmt: skip

BY_KEY = {q.key: q for q in QUESTIONS}


def applicable(answers: A) -> list[Question]:
    """The questions that apply given the answers so far, in order."""
    return [q for q in QUESTIONS if q.when(answers)]


def ask(given: A, prompt: Callable[[Question], Any], on_error: Callable[[str], None] = lambda m: None) -> dict:
    """Ask, in order, every question that applies to the answers so far and was not given.

    ``prompt`` shows one question and returns the raw reply; a reply that does not parse is reported
    through ``on_error`` and asked again.
    """
    answers = dict(given)
    for q in QUESTIONS:
        if q.key in answers or not q.when(answers):
            continue
        while True:
            try:
                answers[q.key] = parse_answer(q, prompt(q))
                break
            except ValueError as e:
                on_error(str(e))
    return answers


def complete(answers: A) -> dict[str, Any]:
    """Fill every applicable question not answered with its default (in order, so conditions see them)."""
    out: dict[str, Any] = {}
    for q in QUESTIONS:
        if q.when(out | dict(answers)):
            out[q.key] = answers.get(q.key, q.default)
    return out


def to_config(answers: A) -> dict[str, Any]:
    """Completed answers → accelerate's config YAML mapping (``accelerate launch --config_file``)."""
    a = complete(answers)
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": a["distributed_type"],
        "num_machines": a["num_machines"],
        "machine_rank": a.get("machine_rank", 0),
        "num_processes": a.get("num_processes", 1),
        "mixed_precision": a["mixed_precision"],
        "use_cpu": a["use_cpu"],
        "main_training_function": "main",
        "downcast_bf16": "no",
    }
    if _multi(a):
        cfg.update({k: a[k] for k in ("main_process_ip", "main_process_port", "same_network", "rdzv_backend")})
        if not cfg["main_process_ip"]:
            del cfg["main_process_ip"]
    if "gpu_ids" in a:
        cfg["gpu_ids"] = a["gpu_ids"]
    if a["dynamo"]:
        cfg["dynamo_config"] = {
            "dynamo_backend": a["dynamo_backend"],
            "dynamo_mode": a["dynamo_mode"],
            "dynamo_use_fullgraph": a["dynamo_use_fullgraph"],
            "dynamo_use_dynamic": a["dynamo_use_dynamic"],
        }
    if _ds(a):
        cfg["deepspeed_config"] = _deepspeed_section(a)
    if _fsdp(a):
        cfg["fsdp_config"] = {k: _typed(k, v) for k, v in a.items() if k.startswith("fsdp_") and v not in ("", None)}
    return cfg


def _deepspeed_section(a: A) -> dict[str, Any]:
    if a.get("deepspeed_config_file"):
        section = {"deepspeed_config_file": a["deepspeed_config_file"]}
    else:
        keys = ("zero_stage", "offload_optimizer_device", "offload_optimizer_nvme_path", "offload_param_device",
                "offload_param_nvme_path", "gradient_accumulation_steps", "gradient_clipping",
                "zero3_save_16bit_model", "zero3_init_flag")  # fmt: skip
        section = {k: _typed(k, a[k]) for k in keys if k in a}
    if "deepspeed_multinode_launcher" in a:
        section["deepspeed_multinode_launcher"] = a["deepspeed_multinode_launcher"]
    return section


def _typed(key: str, value: Any) -> Any:
    return int(value) if key in ("zero_stage", "fsdp_version") else value


def parse_answer(q: Question, raw: Any) -> Any:
    """A raw flag or prompt value → the question's type; ValueError with the expected form if wrong."""
    if q.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("y", "yes", "true", "1"):
            return True
        if text in ("n", "no", "false", "0"):
            return False
        raise ValueError(f"{q.key}: expected yes or no, got {raw!r}")
    if q.kind in ("int", "float"):
        value = (int if q.kind == "int" else float)(raw)
        if (q.low is not None and value < q.low) or (q.high is not None and value > q.high):
            bounds = f"at least {q.low}" if q.high is None else f"between {q.low} and {q.high}"
            raise ValueError(f"{q.key}: expected a number {bounds}, got {raw!r}")
        return value
    if q.kind == "choice" and str(raw) not in q.choices:
        raise ValueError(f"{q.key}: expected one of {', '.join(q.choices)}, got {raw!r}")
    return str(raw)
