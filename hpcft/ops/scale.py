"""``hpcft bench scale``: is it worth more nodes? Throughput, speed-up and efficiency of one job at several sizes.

The same job is submitted once per node count (``bench_overrides``: a short run, no checkpoints, its own
name), one size at a time so that sizes do not compete for the network and the shared filesystem. Each
finished run's ``metrics.jsonl`` gives a ``ScalePoint``: the median of the job's tokens/s records after
the warm-up steps (rank 0 logs the tokens of all ranks), and the median step time. ``scale_rows``
relates every size to the smallest: speed-up = throughput ratio, scaling efficiency = speed-up ÷ GPU ratio
(= per-GPU throughput retained). Pure, except ``write_report`` (JSON + PNG, matplotlib imported there).

The step time is split by difference: every size runs the same job, so each rank computes the same
micro-batches per step at every size (weak scaling), and the step time beyond the smallest size's is the
communication the backward pass did not hide, plus waiting for the slowest rank ("exposed comm"). Timing
collectives inside a step would need a host-device sync per step; DDP overlaps them with compute anyway,
so only the exposed part costs time. A profiler run shows the kernels themselves.

Published reference for real hardware: torchtitan keeps 97–98 % of per-GPU throughput from 8 to 128 H100s
on Llama-3-8B with FSDP.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcft.errors import RunError

REFERENCE = "torchtitan: 97-98 % of per-GPU throughput kept from 8 to 128 H100s (Llama-3-8B, FSDP)"
ONE_MACHINE_NOTE = ("every node of {sizes} ran on one machine (the same kernel boot id), sharing its cores: "
                    "these figures exercise the tool, not the hardware")  # fmt: skip


def bench_overrides(steps: int, name: str, nodes: int) -> tuple[str, ...]:
    """The ``-o`` overrides that make a job a benchmark point: ``steps`` steps, a step record each, no
    evaluation, checkpoint or final model, and a name that says its size."""
    return (
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        "train.save=false",
        "train.eval_steps=null",
        f"run.name={name}-scale-{nodes}n",
    )


@dataclass(frozen=True)
class ScalePoint:
    """What one size measured."""

    run: str
    nodes: int
    world_size: int
    machines: int
    tokens_per_s: float
    step_s: float
    steps_measured: int


def scale_point(run: str, nodes: int, metrics: Sequence[dict[str, Any]], warmup: int) -> ScalePoint:
    """The point of one finished benchmark run from its metrics records, skipping ``warmup`` steps."""
    begins = [m for m in metrics if m.get("event") == "train_begin"]
    if not begins:
        raise RunError(f"{run}: no training in metrics.jsonl", hint="`hpcft logs RUN` says why it did not train")
    begin = begins[-1]
    start = int(begin.get("start_step") or 0)
    steps = [m for m in metrics if "loss" in m and m.get("step", 0) > start + warmup and "time" in m]
    rates = [m["tokens_per_s"] for m in steps if isinstance(m.get("tokens_per_s"), int | float)]
    if len(steps) < 2 or not rates:
        raise RunError(f"{run}: only {len(steps)} step(s) after {warmup} warm-up steps: too few to measure",
                       hint="more --steps, or fewer --warmup")  # fmt: skip
    gaps = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in itertools.pairwise(steps)
            if b["step"] > a["step"]]  # fmt: skip
    return ScalePoint(run=run, nodes=nodes, world_size=int(begin.get("world_size") or nodes),
                      machines=int(begin.get("machines") or nodes), tokens_per_s=statistics.median(rates),
                      step_s=statistics.median(gaps) if gaps else float("nan"), steps_measured=len(steps))  # fmt: skip


def scale_rows(points: Sequence[ScalePoint]) -> list[dict[str, Any]]:
    """Each point with speed-up, scaling efficiency and per-GPU throughput, relative to the smallest size."""
    base = min(points, key=lambda p: (p.world_size, p.nodes))
    rows = []
    for p in sorted(points, key=lambda p: (p.world_size, p.nodes)):
        speedup = p.tokens_per_s / base.tokens_per_s
        gpus = p.world_size / base.world_size
        exposed = max(0.0, p.step_s - base.step_s)  # nan where a step time is unknown
        rows.append({**asdict(p), "speedup": round(speedup, 3), "efficiency": round(speedup / gpus, 3),
                     "per_gpu_tokens_per_s": round(p.tokens_per_s / p.world_size, 1),
                     "exposed_comm_s": round(exposed, 4), "exposed_comm_share": round(exposed / p.step_s, 3),
                     "compared_with": base.run})  # fmt: skip
    return rows


def one_machine_sizes(points: Sequence[ScalePoint]) -> list[int]:
    """Node counts above 1 whose nodes all ran on one machine."""
    return [p.nodes for p in points if p.nodes > 1 and p.machines == 1]


def scale_table(rows: Sequence[dict[str, Any]]):
    """A Rich table of ``rows`` (the caller prints it)."""
    from rich.table import Table

    table = Table("nodes", "GPUs", "tokens/s", "speed-up", "efficiency", "tokens/s per GPU", "step s",
                  "exposed comm s (share)", "run", header_style="bold",
                  caption="exposed comm: step time beyond the smallest size's (same work per rank)")  # fmt: skip
    for r in rows:
        comm = f"{r['exposed_comm_s']:.3f} ({r['exposed_comm_share']:.0%})"
        table.add_row(str(r["nodes"]), str(r["world_size"]), f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.2f}x",
                      f"{r['efficiency']:.0%}", f"{r['per_gpu_tokens_per_s']:,.0f}", f"{r['step_s']:.3f}", comm,
                      r["run"])  # fmt: skip
    return table


def write_report(rows: Sequence[dict[str, Any]], notes: Sequence[str], out: Path) -> list[Path]:
    """``out/scale.json`` and, where matplotlib is installed, ``out/scale.png``; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"
    path.write_text(json.dumps({"points": list(rows), "notes": list(notes), "reference": REFERENCE}, indent=2) + "\n")
    written = [path]
    try:
        import matplotlib
    except ImportError:
        return written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [r["world_size"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(gpus, [r["speedup"] for r in rows], "o-", label="measured")
    left.plot(gpus, [g / gpus[0] for g in gpus], "--", color="grey", label="linear")
    left.set(xlabel="GPUs (ranks)", ylabel="speed-up", title="throughput vs the smallest size")
    left.legend()
    right.bar([str(g) for g in gpus], [100 * r["efficiency"] for r in rows])
    right.set(xlabel="GPUs (ranks)", ylabel="% of per-GPU throughput kept", ylim=(0, 110), title="scaling efficiency")
    if notes:
        fig.suptitle(notes[0], fontsize=8)
    fig.tight_layout()
    png = out / "scale.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [*written, png]
