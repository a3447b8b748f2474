"""Memory planner: how much GPU, CPU and NVMe memory each ZeRO stage / offload choice needs; pure.

Decides (1) a model's parameter count and largest layer from its ``config.json`` (Llama-style
decoders: embeddings, attention with GQA, gated MLP or MoE experts, RMSNorms, lm_head unless tied),
(2) the memory of the *model states* (parameters, gradients, Adam states) per GPU and per node for
every choice, and (3) with ``--zero auto`` the fastest choice that fits, with the reason.

The formulas are DeepSpeed's own estimators, replicated here so that ``hpcft plan`` never imports
DeepSpeed (0.19.8):
``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` (zero_init=True, the HF
Trainer's default under ZeRO-3). Activations, the CUDA context and fragmentation are not in them;
``GPU_USABLE`` leaves room for those. Only ``read_model_config`` touches a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError

# DeepSpeed's default additional_buffer_factor for CPU memory.
BUFFER_FACTOR = 1.5
# Share of a GPU the model states may take; the rest is for activations, buffers, the CUDA context.
GPU_USABLE = 0.8
# Share of a node's memory (resources.mem) the model states may take; the rest is for the OS, data, workers.
CPU_USABLE = 0.9
GB = 1024**3
# tie_word_embeddings when config.json omits it: the default of each model type's config class.
TIED_BY_DEFAULT = {
    "llama": False,
    "mistral": False,
    "mixtral": False,
    "qwen2": False,
    "qwen2_moe": False,
    "qwen3": False,
    "qwen3_moe": False,
    "gemma": True,
}
# (stage, offload) from fastest to slowest: the order --zero auto tries them in.
CHOICES: tuple[tuple[int, str | None], ...] = ((0, None), (1, None), (2, None), (3, None), (3, "cpu"), (3, "nvme"))


@dataclass(frozen=True)
class ParamCount:
    """A model's size as DeepSpeed's estimators take it.

    Attributes:
        total: every parameter, a tied lm_head counted once.
        largest_layer: parameters of the largest single module (DeepSpeed's ``largest_layer_params``).
        embedding: the input embedding.
        lm_head: the output projection (0 when tied to the embedding).
    """

    total: int
    largest_layer: int
    embedding: int
    lm_head: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Model-state memory of one (stage, offload) choice; bytes."""

    stage: int
    offload: str | None
    gpu: int  # per GPU
    cpu: int  # per node
    nvme: int  # per node
    gpus_per_node: int

    @property
    def label(self) -> str:
        """``ZeRO-2``, ``ZeRO-3 + cpu offload``, ..."""
        name = "ZeRO-0 (DDP)" if self.stage == 0 else f"ZeRO-{self.stage}"
        return f"{name} + {self.offload} offload" if self.offload else name

    @property
    def gpu_per_node(self) -> int:
        """All GPUs of one node together."""
        return self.gpu * self.gpus_per_node


@dataclass(frozen=True)
class Verdict:
    """Whether one choice fits the hardware: True, False, or None (memory unknown), and why."""

    estimate: MemoryEstimate
    fits: bool | None
    why: str


@dataclass(frozen=True)
class Choice:
    """What ``--zero auto`` picked and why."""

    estimate: MemoryEstimate
    reason: str


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """``MODEL/config.json`` as a dict (the text config of a multimodal model)."""
    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"train.model: {path} not found (the memory planner reads it)"]) from None
    except (OSError, ValueError) as e:
        raise ConfigError([f"train.model: cannot read {path}: {e}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("text_config") or {}, dict):
        raise ConfigError([f"train.model: {path} is not a model config: expected a JSON object, got "
                           f"{type(data).__name__} (HINT: the config.json save_pretrained writes)"])  # fmt: skip
    return dict(data.get("text_config") or data)


def _need(cfg: Mapping[str, Any], key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(
            [f"config.json: {key}: expected a positive integer, got {value!r} (HINT: pass --zero N by hand)"]
        )
    return value


def count_parameters(cfg: Mapping[str, Any]) -> ParamCount:
    """Parameters of a Llama-style decoder from its config (see ``TIED_BY_DEFAULT`` for the model types).

    Per layer: q/k/v/o projections (GQA: k and v have ``num_key_value_heads`` heads), a gated MLP
    (gate, up, down) or an MoE block (router, experts, optional shared expert), two RMSNorms.
    """
    model_type = cfg.get("model_type")
    if model_type not in TIED_BY_DEFAULT:
        known = ", ".join(TIED_BY_DEFAULT)
        raise ConfigError(
            [f"config.json: model_type {model_type!r}: the memory planner counts only {known} (HINT: pass --zero N)"]
        )
    h, vocab, layers = _need(cfg, "hidden_size"), _need(cfg, "vocab_size"), _need(cfg, "num_hidden_layers")
    attn, attn_largest = _attention(cfg, model_type)
    embedding = vocab * h
    tied = cfg.get("tie_word_embeddings", TIED_BY_DEFAULT[model_type])
    lm_head = 0 if tied else vocab * h
    total, largest = embedding + lm_head + h, max(embedding, attn_largest)  # + the final norm
    for i in range(layers):
        mlp, mlp_largest = _mlp(cfg, i)
        total += attn + mlp + 2 * h
        largest = max(largest, mlp_largest)
    return ParamCount(total=total, largest_layer=largest, embedding=embedding, lm_head=lm_head)


def parameter_numels(cfg: Mapping[str, Any]) -> list[int]:
    """The element count of every parameter tensor, as ``model.parameters()`` lists them (Llama-style).

    What swap buffers are sized from: DeepSpeed swaps per tensor, so its largest tensor and how many
    tensors pass the AIO minimum matter, not the module totals of ``count_parameters``. transformers 5
    keeps a layer's experts in two fused tensors (gate_up_proj, down_proj). Bias vectors are left out:
    they are far below the AIO minimum, so they never take a swap buffer.
    """
    h, vocab, layers = _need(cfg, "hidden_size"), _need(cfg, "vocab_size"), _need(cfg, "num_hidden_layers")
    model_type = cfg.get("model_type")
    heads = _need(cfg, "num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    q, k = heads * head_dim, kv * head_dim
    out = [vocab * h]
    for i in range(layers):
        out += [h * q, h * k, h * k, q * h, h, h]  # q, k, v, o projections; two RMSNorms
        if not _is_moe_layer(cfg, i):
            inter = _need(cfg, "intermediate_size")
            out += [h * inter, h * inter, inter * h]
            continue
        experts = cfg.get("num_local_experts") or cfg["num_experts"]
        inter = cfg.get("moe_intermediate_size") or _need(cfg, "intermediate_size")
        out += [experts * h, experts * 2 * inter * h, experts * h * inter]  # router, gate_up, down
    out.append(h)  # the final norm
    if not cfg.get("tie_word_embeddings", TIED_BY_DEFAULT.get(model_type, False)):
        out.append(vocab * h)
    return out


def _attention(cfg: Mapping[str, Any], model_type: str) -> tuple[int, int]:
    """(parameters of one attention block, its largest projection)."""
    h, heads = _need(cfg, "hidden_size"), _need(cfg, "num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    q, k = heads * head_dim, kv * head_dim
    weights = h * q + 2 * h * k + q * h
    bias = 0
    if cfg.get("attention_bias"):  # Llama-style: every projection
        bias = q + 2 * k + h
    elif model_type in ("qwen2", "qwen2_moe") and cfg.get("qkv_bias", True):  # Qwen2: q, k, v only
        bias = q + 2 * k
    qk_norm = 2 * head_dim if model_type in ("qwen3", "qwen3_moe") else 0
    largest = max(h * q + (q if bias else 0), q * h + (h if cfg.get("attention_bias") else 0))  # q_proj or o_proj
    return weights + bias + qk_norm, largest


def _is_moe_layer(cfg: Mapping[str, Any], i: int) -> bool:
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    if not experts:
        return False
    if i in (cfg.get("mlp_only_layers") or []):
        return False
    return (i + 1) % (cfg.get("decoder_sparse_step") or 1) == 0


def _mlp(cfg: Mapping[str, Any], i: int) -> tuple[int, int]:
    """(parameters of layer ``i``'s MLP or MoE block, its largest module)."""
    h = _need(cfg, "hidden_size")
    if not _is_moe_layer(cfg, i):
        inter = _need(cfg, "intermediate_size")
        bias = 2 * inter + h if cfg.get("mlp_bias") else 0
        return 3 * h * inter + bias, h * inter + (inter if bias else 0)
    experts = cfg.get("num_local_experts") or cfg["num_experts"]
    inter = cfg.get("moe_intermediate_size") or _need(cfg, "intermediate_size")
    # transformers 5 stores all experts of a layer in one module (gate_up_proj + down_proj tensors).
    expert_block = experts * 3 * h * inter
    router = experts * h
    shared = cfg.get("shared_expert_intermediate_size") or 0
    shared_params = 3 * h * shared + h if shared else 0  # + shared_expert_gate (h → 1)
    return expert_block + router + shared_params, max(expert_block, router, h * shared)


def estimate(params: ParamCount, nodes: int, gpus_per_node: int) -> list[MemoryEstimate]:
    """Model-state memory of every choice in ``CHOICES`` (see the module docstring for the sources).

    ZeRO-2 and ZeRO-3 follow DeepSpeed's estimators exactly. DeepSpeed has none for stages 0 and 1:
    stage 0 is the HF Trainer's plain DDP (fp32 weights 4 + grads 4 + Adam m, v 8 = 16 bytes per
    parameter on every GPU); stage 1 uses DeepSpeed's stage-2 accounting (16-bit params 2 + 16-bit
    grads 2 + fp32 grads/params/Adam 16) with only the fp32 part partitioned. NVMe: DeepSpeed's
    offload figure of 18 bytes per parameter split as 16-bit + fp32 params and Adam states (14) on
    NVMe, fp32 gradients (4) in CPU memory.
    """
    p, largest = params.total, params.largest_layer
    gpus = max(gpus_per_node, 1)
    world = nodes * gpus
    load_cpu = int(p * 4 * gpus * BUFFER_FACTOR)  # every process loads the fp32 model on the CPU first
    layer = 4 * largest
    rows = {
        (0, None): (16 * p, load_cpu, 0),
        (1, None): (4 * p + 16 * p // world, load_cpu, 0),
        (2, None): (2 * p + int(18 * p / world), load_cpu, 0),  # estimate_zero2_..., cpu_offload=False
        (3, None): (layer + int(18 * p / world), int(largest * 4 * gpus * BUFFER_FACTOR), 0),
        (3, "cpu"): (layer, int(p * 18 / nodes * BUFFER_FACTOR), 0),  # offload_param + offload_optimizer
        (3, "nvme"): (layer, int(p * 4 / nodes * BUFFER_FACTOR), int(p * 14 / nodes)),
    }
    return [MemoryEstimate(s, o, *rows[(s, o)], gpus_per_node=gpus) for s, o in CHOICES]


def judge(est: MemoryEstimate, gpu_mem: int | None, node_mem: int | None) -> Verdict:
    """Does ``est`` fit GPUs of ``gpu_mem`` bytes and nodes of ``node_mem`` bytes (None: unknown)?"""
    if gpu_mem is None:
        return Verdict(est, None, "GPU memory unknown (--gpu-mem GB)")
    gpu_cap = gpu_mem * GPU_USABLE
    if est.gpu > gpu_cap:
        return Verdict(est, False, f"needs {fmt_bytes(est.gpu)}/GPU > {fmt_bytes(gpu_cap)} usable")
    if node_mem is None:
        note = f" (CPU {fmt_bytes(est.cpu)}/node not checked: resources.mem unset)" if est.offload else ""
        return Verdict(est, True, f"{fmt_bytes(est.gpu)}/GPU fits{note}")
    cpu_cap = node_mem * CPU_USABLE
    if est.cpu > cpu_cap:
        return Verdict(est, False, f"needs {fmt_bytes(est.cpu)} CPU/node > {fmt_bytes(cpu_cap)} usable")
    return Verdict(est, True, f"{fmt_bytes(est.gpu)}/GPU and {fmt_bytes(est.cpu)} CPU/node fit")


def choose(estimates: Sequence[MemoryEstimate], gpu_mem: int | None, node_mem: int | None) -> Choice:
    """The first (fastest) choice that fits, and why the faster ones were passed over."""
    if gpu_mem is None:
        raise ConfigError(["--zero auto: the GPU memory is unknown (HINT: pass --gpu-mem GB, e.g. --gpu-mem 80)"])
    skipped = []
    for est in estimates:
        verdict = judge(est, gpu_mem, node_mem)
        if verdict.fits:
            why = f"{est.label}: fastest choice whose model states fit ({verdict.why})"
            return Choice(est, why + (f"; faster ones do not: {'; '.join(skipped)}" if skipped else ""))
        skipped.append(f"{est.label} {verdict.why}")
    raise ConfigError(
        [f"--zero auto: no choice fits: {'; '.join(skipped)} (HINT: more nodes or GPUs, or a smaller model)"]
    )


def parse_mem(value: str | None) -> int | None:
    """sbatch ``--mem`` (``64G``, ``500000M``, ``500000`` = MB) → bytes; None stays None."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)([KMGT]?)", value.strip().upper())
    if not match:
        return None
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "": 1024**2}[match.group(2)]
    return int(match.group(1)) * scale


def fmt_bytes(n: float) -> str:
    """Bytes as GiB with one decimal, or MiB below 1 GiB."""
    return f"{n / GB:.1f} GiB" if n >= GB else f"{n / 1024**2:.1f} MiB"


def plan_for_spec(spec: Any, gpu_mem_gb: float | None) -> tuple[ParamCount, list[Verdict]]:
    """Parameter count and every choice's verdict for a job spec (reads the model's config.json).

    The CPU memory of the offload choices is ``plan.offload``'s host model (swap buffers as hpcft
    sizes them, the CPU optimizer's states) × ranks per node, not DeepSpeed's model-state estimate.
    """
    if not spec.train.model:
        raise ConfigError(["train.model: the memory planner needs a model directory (not a user script)"])
    cfg = read_model_config(spec.train.model)
    params = count_parameters(cfg)
    gpu_mem = int(gpu_mem_gb * GB) if gpu_mem_gb else None
    node_mem = parse_mem(spec.resources.mem)
    estimates = estimate(params, spec.resources.nodes, spec.resources.gpus_per_node)
    numels = parameter_numels(cfg)
    estimates = [with_host_memory(e, numels, spec.resources.nodes, spec.train.precision) for e in estimates]
    return params, [judge(e, gpu_mem, node_mem) for e in estimates]


def with_host_memory(est: MemoryEstimate, numels: Sequence[int], nodes: int, precision: str) -> MemoryEstimate:
    """``est`` with the CPU memory per node of its offload as hpcft configures it (other choices unchanged)."""
    from dataclasses import replace

    from hpcft.plan import offload

    if not est.offload:
        return est
    world = nodes * est.gpus_per_node
    zero = offload_zero_section(numels, world, precision, est.offload)
    host = offload.host_per_rank(numels, world, precision, zero, cpu_compute=False)
    return replace(est, cpu=host.total * est.gpus_per_node)


def offload_zero_section(numels: Sequence[int], world: int, precision: str, device: str) -> dict[str, Any]:
    """The zero_optimization offload keys hpcft generates for ``--offload device`` (optimizer and params)."""
    from hpcft.plan import offload

    swap = offload.swap_settings(numels, world, precision, param_nvme=device == "nvme",
                                 optimizer_nvme=device == "nvme")  # fmt: skip
    return {"offload_optimizer": {"device": device}, "offload_param": {"device": device, **swap.param}, **swap.zero}


def offloads(zero: Mapping[str, Any]) -> bool:
    """True when a zero_optimization section offloads the optimizer or the parameters."""
    return any((zero.get(k) or {}).get("device") in ("cpu", "nvme") for k in ("offload_optimizer", "offload_param"))


def host_fit_problems(spec: Any, zero: Mapping[str, Any], numels: Sequence[int]) -> list[str]:
    """Why this job's ranks cannot fit a node of ``resources.mem`` with the offload of ``zero``; [] if they can.

    Counted as on GPU nodes (the lower figure): CPU-only nodes also hold the gathered parameters.
    """
    from hpcft.plan import offload

    node_mem = parse_mem(spec.resources.mem)
    ranks = max(spec.resources.gpus_per_node, 1)
    if node_mem is None or not offloads(zero):
        return []
    host = offload.host_per_rank(numels, ranks * spec.resources.nodes, spec.train.precision, zero, cpu_compute=False)
    need = host.total * ranks
    if need <= node_mem * CPU_USABLE:
        return []
    biggest = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sorted(host.parts.items(), key=lambda kv: -kv[1])[:3])
    return [
        f"resources.mem: {spec.resources.mem} per node cannot hold {ranks} ranks of ZeRO-3 with offload: "
        f"{fmt_bytes(host.total)} of host memory per rank ({biggest}), {fmt_bytes(need)} per node > "
        f"{fmt_bytes(node_mem * CPU_USABLE)} usable (HINT: more nodes, fewer processes per node, --offload nvme, "
        "or a larger --mem)"
    ]


def choose_for_spec(spec: Any, gpu_mem_gb: float | None) -> Choice:
    """``--zero auto`` for a job spec: the fastest choice that fits, and why."""
    _, verdicts = plan_for_spec(spec, gpu_mem_gb)
    gpu_mem = int(gpu_mem_gb * GB) if gpu_mem_gb else None
    return choose([v.estimate for v in verdicts], gpu_mem, parse_mem(spec.resources.mem))


def auto_flags(spec: Any, flags: Mapping[str, Any], gpu_mem_gb: float | None) -> tuple[dict[str, Any], str]:
    """``--zero auto``: CLI flags with the chosen stage, and its offload device unless one was given; the reason.

    The offload key is set only where the spec has it (``train.offload.device``).
    """
    from hpcft.spec import field_paths

    choice = choose_for_spec(spec, gpu_mem_gb)
    out = {**flags, "train.zero": choice.estimate.stage}
    key = "train.offload.device"
    if choice.estimate.offload and out.get(key) is None and key in field_paths():
        out[key] = choice.estimate.offload
    return out, choice.reason


def current_choice(spec: Any) -> tuple[int, str | None]:
    """(stage, offload) the spec asks for; the offload fields are read defensively (they may be absent)."""
    device = getattr(getattr(spec.train, "offload", None), "device", None)
    return spec.train.zero, (device if device in ("cpu", "nvme") else None)


def planner_table(spec: Any, gpu_mem_gb: float | None):
    """A Rich table of every choice for ``spec`` (the caller prints it)."""
    from rich.table import Table

    params, verdicts = plan_for_spec(spec, gpu_mem_gb)
    res = spec.resources
    title = (
        f"{params.total / 1e6:,.1f} M parameters (largest layer {params.largest_layer / 1e6:,.1f} M), "
        f"{res.nodes} node(s) × {max(res.gpus_per_node, 1)} GPU(s), GPU {gpu_mem_gb or '?'} GiB, "
        f"node memory {res.mem or '?'}"
    )
    table = Table("choice", "per GPU", "GPUs/node", "CPU/node", "NVMe/node", "fits", title=title, header_style="bold")
    mine = current_choice(spec)
    for v in verdicts:
        e = v.estimate
        fits = {True: "yes", False: "no", None: "?"}[v.fits]
        label = e.label + ("  ◀ this job" if (e.stage, e.offload) == mine else "")
        nvme = fmt_bytes(e.nvme) if e.nvme else "-"
        table.add_row(label, fmt_bytes(e.gpu), fmt_bytes(e.gpu_per_node), fmt_bytes(e.cpu), nvme, f"{fits}: {v.why}")
    return table


def job_host_memory(spec: Any, ds_config_text: str | None):
    """This job's host memory per rank (``plan.offload.HostMemory``) for its planned ds_config.json; None
    without offload or without a model the planner can read."""
    from hpcft.plan import offload

    if not ds_config_text or not spec.train.model:
        return None
    zero = json.loads(ds_config_text).get("zero_optimization") or {}
    if not offloads(zero):
        return None
    try:
        numels = parameter_numels(read_model_config(spec.train.model))
    except ConfigError:
        return None
    world = spec.resources.nodes * max(spec.resources.gpus_per_node, 1)
    return offload.host_per_rank(numels, world, spec.train.precision, zero, cpu_compute=False)
