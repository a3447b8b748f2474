"""P6: time from launch to the first training step, resumed ÷ fresh (goal ≤ 1.2).

Both start the same 2-rank job (``torch.distributed.run --standalone``, the demo model, CPU): the
fresh start from nothing, the resumed one from a run directory holding a committed checkpoint
(model, optimizer, scheduler, RNG states). The time is wall clock from the launch until rank 0 has
logged the first step after the start point in ``metrics.jsonl``; the data cache is warm for both.

    .venv/bin/python benchmarks/bench_resume.py [--runs 3] [--hidden-size 512]

Prints one JSON line and one markdown table row (medians over the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_run(tmp: Path, name: str, job: Path) -> Path:
    """A run directory for ``job`` made the way ``hpcft submit --backend local`` makes one."""
    from datetime import datetime

    from hpcft.plan.plan import make_plan
    from hpcft.rundir import store as runs
    from hpcft.spec import layering as config

    spec = config.load_job(job, overrides=[f"run.runs_dir={tmp}", f"run.name={name}", "launch.backend=local"])
    return runs.write_run_dir(make_plan(spec, python=sys.executable, now=datetime.now()))


def time_to_first_step(run: Path, after: int) -> float:
    """Launch 2 ranks on ``run``; seconds until a step > ``after`` is logged; then stop them."""
    metrics = run / "metrics.jsonl"
    start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "hpcft.train.main", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while True:
            lines = metrics.read_text().splitlines()[start:] if metrics.exists() else []
            if any(json.loads(x).get("step", 0) > after and "loss" in x for x in lines):
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"training exited with {proc.returncode} before its first step")
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait()


def measure() -> tuple[str, str]:
    """The JSON line and the markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=512)
    opts = parser.parse_args()
    from hpcft.train.demo import build_demo

    fresh, resumed = [], []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp_name:
        tmp = Path(tmp_name)
        job = build_demo(tmp / "demo", hidden_size=opts.hidden_size)
        data = yaml.safe_load(job.read_text())
        data["train"].update(max_steps=10, save_steps=10, eval_steps=None)
        job.write_text(yaml.safe_dump(data))
        seed = make_run(tmp, "seed", job)  # trains to step 10 once: warms the data cache, makes checkpoint-10
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "hpcft.train.main", str(seed)], check=True, capture_output=True)  # fmt: skip
        data["train"]["max_steps"] = 1000
        job.write_text(yaml.safe_dump(data))
        for i in range(opts.runs):
            fresh.append(time_to_first_step(make_run(tmp, f"fresh{i}", job), after=0))
            run = make_run(tmp, f"resumed{i}", job)
            shutil.copytree(seed / "checkpoints" / "checkpoint-10", run / "checkpoints" / "checkpoint-10")
            resumed.append(time_to_first_step(run, after=10))
    ratio = statistics.median(resumed) / statistics.median(fresh)
    result = {"bench": "P6 resume to first step", "ratio": round(ratio, 3), "goal": "<= 1.2",
              "fresh_s": [round(x, 2) for x in fresh], "resumed_s": [round(x, 2) for x in resumed],
              "hidden_size": opts.hidden_size, "runs": opts.runs}  # fmt: skip
    row = (
        f"| P6 resume → first step | {ratio:.2f} (≤ 1.2) | resumed {statistics.median(resumed):.1f} s ÷ fresh "
        f"{statistics.median(fresh):.1f} s (2 ranks, {opts.hidden_size}-wide demo model); median of {opts.runs} |"
    )
    return json.dumps(result), row


if __name__ == "__main__":
    report(measure)
