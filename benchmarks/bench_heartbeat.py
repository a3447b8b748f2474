"""P16: the per-step cost of the progress heartbeats (issue #26): the same training with them ÷ without.

With heartbeats every rank writes its step, phase and time into ``/dev/shm`` at each step and times its own
compute with a DDP communication hook (``hpcft.train.heartbeat``), as under ``hpcft node``; without, the
ranks publish nothing (``HPCFT_HEARTBEAT_DIR`` unset, as with ``run.hang_timeout: 0``). Both are
``hpcft submit --backend local`` of the demo job on 2 CPU ranks (P1's runner and step-rate median), in
back-to-back pairs alternating which goes first; also the cost of one ``Publisher.publish`` call.

    .venv/bin/python benchmarks/bench_heartbeat.py [--runs 5] [--steps 60] [--hidden-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_trainer import pair_options, rate, run_hpcft  # P1's runner, step-rate median and options
from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

from hpcft.train import heartbeat


def publish_cost(calls: int = 100_000) -> float:
    """Microseconds per ``publish`` (a step's beat), median of 5 batches."""
    pub = heartbeat.Publisher(Path(tempfile.mkdtemp(dir="/dev/shm")) / "rank-0", 0)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for step in range(calls):
            pub.publish(step, "train", 0.01)
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def measure(opts: argparse.Namespace) -> tuple[str, str]:
    from hpcft.train.demo import build_demo

    work = Path(tempfile.mkdtemp(prefix="bench-heartbeat-"))
    demo = work / "demo"
    build_demo(demo, hidden_size=opts.hidden_size)
    beats = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="hpcft-bench-"))
    on, off = [], []
    for i in range(opts.runs):
        for who in ("on", "off") if i % 2 == 0 else ("off", "on"):
            if who == "on":
                os.environ[heartbeat.ENV] = str(beats)
                on.append(rate(run_hpcft(demo, work, opts.steps), opts.skip))
            else:
                os.environ.pop(heartbeat.ENV, None)
                off.append(rate(run_hpcft(demo, work, opts.steps), opts.skip))
    assert list(beats.glob("*/rank-*")), "the ranks published no heartbeat"
    per_pair = [round(a / b, 3) for a, b in zip(on, off, strict=True)]
    ratio, micro = statistics.median(per_pair), publish_cost()
    result = {"bench": "P16", "ratio": round(ratio, 3), "goal": 0.99, "on_tok_s": round(statistics.median(on), 1),
              "off_tok_s": round(statistics.median(off), 1), "per_pair": per_pair, "publish_us": round(micro, 2),
              "runs": opts.runs, "steps": opts.steps, "hidden_size": opts.hidden_size}  # fmt: skip
    row = (f"| P16 heartbeats | {ratio:.3f} (≥ 0.99) | tok/s with ÷ without heartbeats and the compute timer, median "
           f"of {opts.runs} pairs ({' '.join(map(str, per_pair))}); {result['on_tok_s']:.0f} vs "
           f"{result['off_tok_s']:.0f} tok/s; DDP 2 CPU ranks, hidden {opts.hidden_size}; one publish "
           f"{micro:.2f} µs |")  # fmt: skip
    return json.dumps(result), row


def main() -> None:
    opts = pair_options(__doc__)
    report(lambda: measure(opts))


if __name__ == "__main__":
    main()
