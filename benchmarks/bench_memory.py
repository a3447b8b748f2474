"""P8: the memory planner's host memory per rank against the measured peak RSS (goal: within 1.5×).

Runs the product card's headline on the lab cluster — 2 nodes × 2 ranks, ZeRO-3 — with the optimizer
and parameters offloaded to CPU, and to NVMe, for two demo model sizes, and compares each rank's peak
resident memory (``VmHWM``, logged by every rank at the end of training) with
``hpcft.plan.offload.host_per_rank`` for the ds_config.json the plan wrote (CPU compute: the lab has no GPUs).

    scripts/dev-cluster up; .venv/bin/python benchmarks/bench_memory.py [--sizes 512,1024] [--steps 10]

Prints one JSON line and a markdown table (one row per size and offload device).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

HPCFT = [sys.executable, "-m", "hpcft"]
PEAK = re.compile(r"peak host memory of this rank: (\d+) MiB")


def run_job(job: Path, runs: Path, device: str, nvme: Path, steps: int) -> Path:
    """Submit the headline command and wait; the run directory."""
    argv = [*HPCFT, "submit", str(job), "--nodes", "2", "--zero", "3", "--offload", device, "--runs-dir", str(runs),
            "-o", f"train.offload.nvme_path={nvme}", "-o", f"train.max_steps={steps}", "-o", "train.eval_steps=null",
            "-o", f"run.name=mem-{device}", "--wait"]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=1200)
    return max(runs.glob(f"mem-{device}-*"), key=lambda p: p.stat().st_mtime)


def measured_mib(run: Path) -> list[int]:
    """Each rank's peak RSS in MiB from its lines in the node logs (``hpcft logs --rank``), rank 0 up."""
    from hpcft.ops.logs import rank_text

    peaks: list[int] = []
    while found := PEAK.search(rank_text(run, len(peaks))):
        peaks.append(int(found.group(1)))
    return peaks


def predicted_mib(run: Path, model: Path) -> tuple[int, dict[str, int]]:
    """The planner's host memory per rank for the run's DeepSpeed config; total and parts in MiB."""
    from hpcft.plan import memory, offload

    config = json.loads((run / "ds_config.json").read_text())
    numels = memory.parameter_numels(memory.read_model_config(model))
    est = offload.host_per_rank(numels, 4, "fp32", config["zero_optimization"], cpu_compute=True)
    return est.total // 2**20, {k: v // 2**20 for k, v in est.parts.items()}


def measure(args: argparse.Namespace) -> tuple[str, str]:
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-mem-", dir="/tmp") as tmp:
        base = Path(tmp)
        for size in args.sizes:
            demo = base / f"demo{size}"
            subprocess.run([*HPCFT, "init-demo", str(demo), "--hidden-size", str(size)], check=True,
                           capture_output=True)  # fmt: skip
            for device in ("cpu", "nvme"):
                nvme = base / "nvme"
                nvme.mkdir(exist_ok=True)
                run = run_job(demo / "job.yaml", base / "runs", device, nvme, args.steps)
                got = measured_mib(run)
                want, parts = predicted_mib(run, demo / "model")
                ratio = max(got) / want
                results.append({"hidden": size, "offload": device, "measured_mib": got, "predicted_mib": want,
                                "parts_mib": parts, "ratio_max_measured_to_predicted": round(ratio, 2)})  # fmt: skip
                rows.append(f"| P8 | hidden {size}, ZeRO-3 + {device} | peak RSS/rank {statistics.median(got):.0f} "
                            f"MiB (max {max(got)}) | planner {want} MiB | {ratio:.2f} |")  # fmt: skip
    return json.dumps({"benchmark": "P8 host memory", "results": results}), "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024])
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report(lambda: measure(args))


if __name__ == "__main__":
    main()
