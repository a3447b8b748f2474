"""P12: time of one ``hpcft status`` refresh for 1, 100 and 1,000 runs and for runs of 10**6 steps; goal ≤ 0.3 s
for 100 runs of any length.

Run directories are written by the real ``submit --no-submit`` (local backend, so SLURM's one squeue/sacct
call per refresh is not in the figures), with a finished job, a committed checkpoint and a metrics log of
``--steps`` records in hpcft's own format (a train_begin, a requeue half-way, an eval every 500 steps). Long logs are
hard links of one file, so 100 runs of 10**6 steps take 150 MB of disk, not 15 GB.

Each case is timed side by side with the baseline, the same status read with the whole log
(``store.read_metrics``, as status did before), in pairs; medians of ``--runs``. The baseline is skipped where
one refresh would take minutes.

    .venv/bin/python benchmarks/bench_status.py [--runs 5]

Prints one JSON line and one markdown table row per case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fuzzing as F

CASES = [(1, 1_000), (100, 1_000), (1_000, 1_000), (1, 1_000_000), (100, 1_000_000)]
BASELINE_MAX_RECORDS = 5_000_000  # runs × steps read whole by the baseline, at most


def write_log(run: Path, steps: int) -> None:
    """A metrics log of ``steps`` steps as rank 0 writes it (see hpcft.train.metrics), with its events file."""
    begin = {"event": "train_begin", "max_steps": steps + 1000, "start_step": 0, "world_size": 8, "job_id": "7",
             "restart": 0, "time": 1.0}  # fmt: skip
    with open(run / "metrics.jsonl", "wb") as log, open(run / "metrics-events.jsonl", "wb") as events:

        def put(record: dict) -> None:
            log.write((json.dumps(record) + "\n").encode())
            if "event" in record:
                events.write((json.dumps({**record, "log_end": log.tell()}) + "\n").encode())

        put(begin)
        for s in range(1, steps + 1):
            if s == steps // 2:
                put({**begin, "start_step": s - 1, "restart": 1, "time": 1.0 + s})
            put({"step": s, "time": 1.0 + s, "elapsed": float(s), "loss": 2.0 + 1 / s, "lr": 1e-4,
                 "tokens_per_s": 5000.0, **({"last_eval_loss": 2.1} if s > 500 else {})})  # fmt: skip
            if s % 500 == 0:
                put({"step": s, "time": 1.5 + s, "elapsed": s + 0.5, "eval_loss": 2.1, "perplexity": 8.2})


def make_runs(work: Path, count: int, steps: int, logs: dict[int, Path]) -> Path:
    """``count`` runs under a new runs directory, all with the same ``steps``-long log (hard links)."""
    template = work / "template"
    if not template.exists():
        F.make_workdir(work / "src")
        template = F.make_run(work / "src", name="bench").rename(template)
        state = json.loads((template / "state.json").read_text())
        state["backend"] = "local"
        state["jobs"] = [{"id": "local-1", "host": "login1", "pid": 1, "rc": 0, "submitted": state["created"]}]
        (template / "state.json").write_text(json.dumps(state))
    if steps not in logs:
        logs[steps] = work / f"log-{steps}"
        logs[steps].mkdir()
        write_log(logs[steps], steps)
    runs = work / f"runs-{count}-{steps}"
    runs.mkdir()
    for i in range(count):
        run = runs / f"run-{i:04d}"
        shutil.copytree(template, run, ignore=shutil.ignore_patterns("metrics*.jsonl"))
        for name in ("metrics.jsonl", "metrics-events.jsonl"):
            os.link(logs[steps] / name, run / name)
    return runs


def refresh(runs: Path, whole: bool) -> float:
    """Seconds for one status refresh of every run under ``runs`` (what ``hpcft status`` does before printing)."""
    from hpcft.ops import status
    from hpcft.rundir import store

    saved = store.read_progress
    if whole:
        store.read_progress = store.read_metrics  # the baseline: the whole log
    try:
        t0 = time.perf_counter()
        rows = status.run_statuses(store.list_runs(runs))
        seconds = time.perf_counter() - t0
    finally:
        store.read_progress = saved
    assert rows and all(r.state == "COMPLETED" and r.step is not None for r in rows), rows[:1]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        work, logs = Path(tmp), {}
        for count, steps in CASES:
            runs = make_runs(work, count, steps, logs)
            with_base = count * steps <= BASELINE_MAX_RECORDS
            new, old = [], []
            for _ in range(opts.runs):
                new.append(refresh(runs, whole=False))
                if with_base:
                    old.append(refresh(runs, whole=True))
            t, base = statistics.median(new), (statistics.median(old) if old else None)
            result = {"bench": "P12 status refresh", "runs_shown": count, "steps": steps, "seconds": round(t, 4),
                      "whole_log_seconds": round(base, 4) if base else None,
                      "ratio": round(t / base, 4) if base else None, "goal": "<= 0.3 s for 100 runs",
                      "repeats": opts.runs}  # fmt: skip
            print(json.dumps(result), flush=True)
            versus = f"{base:.3f} s reading whole logs (× {t / base:.3f})" if base else "whole logs: not run (minutes)"
            print(f"| P12 status, {count} runs × {steps:,} steps | {t:.3f} s | {versus}; median of {opts.runs} |",
                  flush=True)  # fmt: skip
            shutil.rmtree(runs)


if __name__ == "__main__":
    main()
