"""Goodput: where a run's time went, from what the run directory and SLURM already hold; pure but for ``of_run``.

Buckets, in seconds:
- ``queue``: each job run's wait from its submission (a requeue's included, with SLURM's requeue hold) to
  its start (``sacct --duplicates``: Submit → Start);
- ``startup``: from a job run's start (or, after an in-job restart, the new ranks' process start) to the
  training loop's start (``train_begin``), resume loading included;
- ``productive``: the steps the final history keeps, saves excluded;
- ``checkpoint``: blocking saves (``save`` records: should_save → committed), cut out of the step or the
  tail they interrupted;
- ``redone``: steps trained again after a fault (past the checkpoint the next start resumed from);
- ``restart``: a fault's teardown until the ranks start again inside the job, and a job run's tail after
  its last step (saving for a requeue, the final export, after-job);
- ``unknown``: what is left of the time the job held its nodes.
``held`` is the sum of the job runs' Start → End; the buckets but ``queue`` add up to it. ETTR = productive ÷ held.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcft.plan import save_interval

BUCKETS = ("queue", "startup", "productive", "checkpoint", "redone", "restart", "unknown")


@dataclass(frozen=True)
class JobRun:
    """One run of a SLURM job (a requeued job has one per run): UNIX times, None where not (yet) known."""

    job: str
    submit: float
    start: float | None
    end: float | None


def attempts(metrics: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records split at each ``train_begin``: ``{"begin": record, "steps": [(step, time)], "saves": [(time,
    seconds)]}`` (a save record's time is its commit, ``seconds`` before it the save began)."""
    out: list[dict[str, Any]] = []
    for m in metrics:
        if m.get("event") == "train_begin":
            out.append({"begin": m, "steps": [], "saves": []})
        elif out and m.get("event") == "save" and _numbers(m.get("time"), m.get("seconds")):
            out[-1]["saves"].append((float(m["time"]), float(m["seconds"])))
        elif out and "loss" in m and isinstance(m.get("step"), int) and _numbers(m.get("time")):
            out[-1]["steps"].append((m["step"], float(m["time"])))
    return out


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _run_of(runs: Sequence[JobRun], t: float) -> JobRun | None:
    return next((r for r in runs if r.start is not None and r.start <= t <= (r.end or math.inf)), None)


Span = tuple[str, float, float]  # (bucket, start, end), UNIX times


def timeline(runs: Sequence[JobRun], metrics: Iterable[Mapping[str, Any]], now: float) -> list[Span]:
    """The run's time as spans that do not overlap, in time order (``hpcft plot`` draws them; ``ledger`` sums
    them); pure. A save (``checkpoint``) is cut out of the span it interrupted: a step, or a run's tail."""
    spans: list[Span] = []

    def add(kind: str, start: float, end: float) -> None:
        if end <= start:
            return
        if spans and spans[-1][0] == kind and spans[-1][2] == start:  # contiguous: one span
            spans[-1] = (kind, spans[-1][1], end)
        else:
            spans.append((kind, start, end))

    for r in runs:
        add("queue", r.submit, r.start if r.start is not None else now)
    tries = [a for a in attempts(metrics) if _numbers(a["begin"].get("time"))]
    last_of_run: dict[str, float] = {}
    saves: list[tuple[float, float]] = []
    for i, a in enumerate(tries):
        begin = float(a["begin"]["time"])
        run = _run_of(runs, begin)
        key = f"{run.job}@{run.start}" if run else "?"
        started = (a["begin"].get("startup") or {}).get("process_start")
        if key in last_of_run:  # an in-job restart: the gap before the new ranks' process start
            t0 = float(started) if _numbers(started) else begin
            add("restart", last_of_run[key], t0)
        else:
            t0 = run.start if run else begin
        add("startup", t0, begin)
        kept_to = tries[i + 1]["begin"].get("start_step", math.inf) if i + 1 < len(tries) else math.inf
        previous = begin
        for step, t in a["steps"]:
            add("redone" if step > kept_to else "productive", previous, t)
            previous = t
        saves.extend((t - seconds, t) for t, seconds in a["saves"] if seconds > 0)
        last_of_run[key] = previous
    for r in runs:
        key = f"{r.job}@{r.start}"
        if r.start is not None and key in last_of_run:
            add("restart", last_of_run[key], r.end or now)
    return sorted(_cut(spans, saves) + [("checkpoint", a, b) for a, b in saves], key=lambda span: span[1])


def _cut(spans: list[Span], holes: list[tuple[float, float]]) -> list[Span]:
    """``spans`` less the time of ``holes``."""
    out = []
    for kind, start, end in spans:
        pieces = [(start, end)]
        for a, b in holes:
            pieces = [p for lo, hi in pieces for p in ((lo, min(hi, a)), (max(lo, b), hi)) if p[1] > p[0]]
        out += [(kind, lo, hi) for lo, hi in pieces]
    return out


def ledger(runs: Sequence[JobRun], metrics: Iterable[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """``{"ettr": …, "held": s, "wall": s, "seconds": {bucket: s}}`` of a run: its ``timeline`` summed; pure."""
    s = dict.fromkeys(BUCKETS, 0.0)
    for kind, start, end in timeline(runs, metrics, now):
        s[kind] += end - start
    held = sum(max(0.0, (r.end or now) - r.start) for r in runs if r.start is not None)
    s["unknown"] = max(0.0, held - sum(v for k, v in s.items() if k not in ("queue", "unknown")))
    return {"ettr": round(s["productive"] / held, 3) if held else None, "held": round(held, 1),
            "wall": round(held + s["queue"], 1), "seconds": {k: round(v, 1) for k, v in s.items()}}  # fmt: skip


def save_advice(events: Iterable[Mapping[str, Any]], held: float, save_seconds: float | None,
                step_seconds: float | None) -> dict[str, Any] | None:  # fmt: skip
    """How often to save for this run's own fault rate (``hpcft.plan.save_interval``: Daly's refinement of
    Young's ``√(2 · Ts · MTBF)``); None without a fault or a measured save; pure. MTBF = the time held ÷ the
    faults seen (restarts, requeues after a preemption or a crash, node losses; not time limits)."""
    faults = save_interval.faults(events)
    if not faults or not save_seconds or not held:
        return None
    mtbf = held / faults
    interval = save_interval.daly_interval(save_seconds, mtbf)
    steps = max(1, round(interval / step_seconds)) if step_seconds else None
    return {"faults": faults, "mtbf_s": round(mtbf, 1), "save_s": save_seconds, "interval_s": round(interval, 1),
            "young_s": round(save_interval.young_interval(save_seconds, mtbf), 1), "save_steps": steps}  # fmt: skip


def save_seconds(metrics: Iterable[Mapping[str, Any]], fallback: float | None = None) -> float | None:
    """The median blocking time of the run's saves (``save`` records), else ``fallback``; pure. A median: one
    save on a busy filesystem can take twice as long as the next."""
    seconds = [s for att in attempts(metrics) for _, s in att["saves"]]
    return round(statistics.median(seconds), 3) if seconds else fallback


def step_seconds(metrics: Iterable[Mapping[str, Any]]) -> float | None:
    """The median duration of a step (consecutive step records of one start); pure."""
    gaps = [b - a for att in attempts(metrics) for (_, a), (_, b) in zip(att["steps"], att["steps"][1:], strict=False)]
    return statistics.median(gaps) if gaps else None


def summary(book: Mapping[str, Any]) -> str:
    """``goodput: ETTR 0.71 of 5.3 min held; largest loss: startup 1.2 min (22 %)``; pure."""
    if book.get("ettr") is None:
        return "goodput: nothing held yet"
    losses = {k: v for k, v in book["seconds"].items() if k != "productive"}
    worst = max(losses, key=losses.get)
    share = losses[worst] / book["wall"] * 100 if book["wall"] else 0
    return (f"goodput: ETTR {book['ettr']:.2f} of {book['held'] / 60:.1f} min held; largest loss: {worst} "
            f"{losses[worst] / 60:.1f} min ({share:.0f} % of {book['wall'] / 60:.1f} min)")  # fmt: skip


def _inputs(path, runs_of=None) -> tuple[dict[str, Any], list[JobRun], list[dict[str, Any]]]:
    """A run's state, its jobs' runs (``runs_of``: sacct's ``client.job_runs``), its whole metrics log."""
    from hpcft.rundir import store
    from hpcft.slurm import client

    state = store.read_state(path)
    ids = [j["id"] for j in state.get("jobs", []) if "id" in j]
    return state, [JobRun(*r) for r in (runs_of or client.job_runs)(ids)], store.read_metrics(path)


def measured(path, now: float | None = None, runs_of=None) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """The run's state, its ledger, its median save and step seconds: one read of its files (and of sacct)."""
    import time

    state, runs, metrics = _inputs(path, runs_of)
    book = ledger(runs, metrics, time.time() if now is None else now)
    return state, book, save_seconds(metrics, state.get("last_save_seconds")), step_seconds(metrics)


def of_run(path, now: float | None = None, runs_of=None) -> dict[str, Any]:
    """The ledger of the run at ``path``, with the save advice."""
    state, book, save_s, step_s = measured(path, now, runs_of)
    return {**book, "save_advice": save_advice(state.get("events", []), book["held"], save_s, step_s)}


def timeline_of_run(path, now: float | None = None) -> list[Span]:
    """The ``timeline`` of the run at ``path``."""
    import time

    _, runs, metrics = _inputs(path)
    return timeline(runs, metrics, time.time() if now is None else now)


def table(book: Mapping[str, Any]):
    """A Rich table of the buckets: seconds and share of the wall time, ETTR in the title."""
    from rich.table import Table

    ettr = "–" if book.get("ettr") is None else f"{book['ettr']:.3f}"
    out = Table(title=f"goodput: ETTR {ettr} (productive ÷ {book['held']:.0f} s held; wall {book['wall']:.0f} s)")
    for name in ("bucket", "seconds", "share of wall"):
        out.add_column(name, justify="left" if name == "bucket" else "right")
    for name in BUCKETS:
        seconds = book["seconds"][name]
        out.add_row(name, f"{seconds:.1f}", f"{seconds / book['wall'] * 100:.1f} %" if book["wall"] else "–")
    advice = book.get("save_advice")
    if advice:
        every = f" = every {advice['save_steps']} steps" if advice["save_steps"] else ""
        out.caption = (
            f"save every {advice['interval_s']:.0f} s{every} for this run's {advice['faults']} fault(s) "
            f"(MTBF {advice['mtbf_s']:.0f} s, save {advice['save_s']} s; Daly's refinement of Young's √(2·Ts·MTBF))"
        )
    return out
