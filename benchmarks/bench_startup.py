"""P15: start and restart on the lab, warm ranks (``launch.warm_start``) against cold ones, side by side.

Figures are in units of one cold ``python -c 'import transformers.trainer'`` timed on the same machine in the
same pair, so they mean the same on any machine:

- *start*: ``hpcft submit`` → the first training step in ``metrics.jsonl``, the demo on 2 nodes × 2 ranks,
  submitted once the lab's nodes are idle (not waiting for the bench's previous job to be torn down);
- *CPU*: the machine's busy CPU-seconds (/proc/stat) from ``hpcft submit`` to the end of the demo job of 20
  steps on 2 nodes × 2 ranks (an idle lab: everything else on the machine counts too);
- *restart*: a rank SIGKILLed at step 10 → the next ``train_begin`` record of the restarted ranks (torchrun's
  in-job restart), the demo on 2 nodes × 1 rank;
- *nvme* (``--nvme``): the NVMe headline (8 M parameters, ZeRO-3, parameters and optimizer offloaded to NVMe,
  2 nodes × 2 ranks): ``hpcft submit`` → first step of its first job, and ``hpcft resume`` → first step of the
  same run resumed from its step-6 checkpoint (#27: the first job within 1.2 × the resume's time: nothing
  compiled in it). Needs the DeepSpeed ops built (``make ops``; ``$HPCFT_OPS_CACHE``, as the Makefile's).

Each warm start also prints rank 0's start-up profile (seconds from its process start to each stage).

Pairs alternate warm and cold so that drift on a noisy machine hits both; medians are printed.

    scripts/dev-cluster up && .venv/bin/python benchmarks/bench_startup.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

# The op cache `make ops` built (the Makefile's and the tests' root): the NVMe headline's jobs load the ops from
# it and build nothing; without it they would build them into the bench's fresh runs directory, for minutes.
os.environ.setdefault("HPCFT_OPS_CACHE", str(Path.home() / ".cache" / "hpcft" / "torch_extensions"))


def hpcft(*args: str, check: bool = True) -> str:
    return subprocess.run([sys.executable, "-m", "hpcft", *args], check=check, capture_output=True, text=True).stdout


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait(what: str, predicate, timeout: float = 300) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def lab_idle() -> bool:
    """Every node of the lab idle: no earlier job of the bench still torn down (COMPLETING), which a new job
    would wait for; its start would then measure that job's teardown, not its own."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return bool(out) and all(state == "idle" for state in out)


def submit(demo: Path, runs: Path, warm: bool, *args: str) -> Path:
    hpcft("submit", str(demo / "job.yaml"), "--nodes", "2", "--runs-dir", str(runs), "-o",
          f"launch.warm_start={str(warm).lower()}", "-o", "train.eval_steps=null", *args)  # fmt: skip
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    return run


def first_step(run: Path, after: int = 0) -> bool:
    return any("loss" in r and r["step"] > after for r in records(run))


def start_s(demo: Path, tmp: Path, warm: bool) -> float:
    wait("idle nodes", lab_idle, timeout=120)
    t0 = time.monotonic()
    run = submit(demo, Path(tempfile.mkdtemp(dir=tmp)), warm, "-o", "train.max_steps=10")
    t1 = wait("the first step", lambda: first_step(run))
    hpcft("cancel", str(run), check=False)  # done with it (it may have ended already)
    profile = next((r.get("startup") for r in records(run) if r.get("event") == "train_begin"), None)
    print(f"  start {'warm' if warm else 'cold'} {t1 - t0:.1f} s; rank 0's profile: {profile}", file=sys.stderr)
    return t1 - t0


def nvme_s(tmp: Path) -> tuple[float, float]:
    """(submit → first step of the NVMe headline's first job, resume → first step of its resume from step 6)."""
    demo = tmp / "demo512"
    if not demo.exists():
        hpcft("init-demo", str(demo), "--hidden-size", "512")
    runs, nvme = Path(tempfile.mkdtemp(dir=tmp)), Path(tempfile.mkdtemp(dir=tmp))
    wait("idle nodes", lab_idle, timeout=120)
    t0 = time.monotonic()
    job = subprocess.Popen([sys.executable, "-m", "hpcft", "submit", str(demo / "job.yaml"), "--nodes", "2",
                            "--runs-dir", str(runs), "--wait", "--zero", "3", "--offload", "nvme", "-o",
                            f"train.offload.nvme_path={nvme}", "-o", "train.max_steps=12", "-o", "train.save_steps=6",
                            "-o", "train.eval_steps=null"], stdout=subprocess.DEVNULL)  # fmt: skip
    wait("the run directory", lambda: any(runs.glob("*/spec.yaml")))
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    first = wait("the first step", lambda: first_step(run), timeout=900) - t0
    if job.wait(timeout=900):
        raise RuntimeError(f"the NVMe headline's first job failed: {run}")
    shutil.rmtree(run / "checkpoints" / "checkpoint-12")  # interrupted after its step-6 checkpoint
    for name in ("FINISHED", "metrics.jsonl"):
        (run / name).unlink()
    wait("idle nodes", lab_idle, timeout=120)
    t0 = time.monotonic()
    subprocess.Popen([sys.executable, "-m", "hpcft", "resume", str(run)], stdout=subprocess.DEVNULL)
    resumed = wait("the resumed step", lambda: first_step(run, after=6), timeout=900) - t0
    hpcft("cancel", str(run), check=False)
    return first, resumed


def busy_s() -> float:
    """The machine's CPU-seconds spent busy so far (every CPU: user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def cpu_s(demo: Path, tmp: Path, warm: bool) -> float:
    wait("idle nodes", lab_idle, timeout=120)
    b0 = busy_s()
    submit(demo, Path(tempfile.mkdtemp(dir=tmp)), warm, "--wait", "-o", "train.max_steps=20")
    return busy_s() - b0


def restart_s(demo: Path, tmp: Path, warm: bool) -> float:
    run = submit(demo, Path(tempfile.mkdtemp(dir=tmp)), warm, "--gpus-per-node", "1", "-o", "train.max_steps=400",
                 "-o", "train.save_steps=5")  # fmt: skip
    wait("step 10", lambda: any(r.get("step", 0) >= 10 and "loss" in r for r in records(run)))
    log = (run / "logs" / "node-node2.log").read_text()
    pid = int([line for line in log.splitlines() if " pid " in line][-1].rsplit(" pid ", 1)[1])
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t1 = wait("the restarted ranks", lambda: sum(r.get("event") == "train_begin" for r in records(run)) == 2)
    hpcft("cancel", str(run), check=False)  # done with it (it may have ended already)
    return t1 - t0


def import_s() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import transformers.trainer"], check=True, capture_output=True)
    return time.monotonic() - t0


def measure(pairs: int, nvme: bool) -> tuple[str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    demo = tmp / "demo"
    hpcft("init-demo", str(demo))
    got: dict[str, list[float]] = {k: [] for k in ("import", "start_warm", "start_cold", "cpu_warm", "cpu_cold",
                                                  "restart_warm", "restart_cold")}  # fmt: skip
    if nvme:
        got |= {"nvme_first": [], "nvme_resume": []}
    for i in range(pairs):
        got["import"].append(import_s())
        for warm in (True, False) if i % 2 == 0 else (False, True):
            got[f"start_{'warm' if warm else 'cold'}"].append(start_s(demo, tmp, warm))
            got[f"cpu_{'warm' if warm else 'cold'}"].append(cpu_s(demo, tmp, warm))
            got[f"restart_{'warm' if warm else 'cold'}"].append(restart_s(demo, tmp, warm))
        if nvme:
            first, resumed = nvme_s(tmp)
            got["nvme_first"].append(first)
            got["nvme_resume"].append(resumed)
        print(f"pair {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in got.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in got.items()}
    unit = med["import"]
    out = {k: round(v, 2) for k, v in med.items()} | {f"{k}_imports": round(v / unit, 2) for k, v in med.items()}
    row = (f"| {pairs} pairs | import {unit:.2f} s | start warm {med['start_warm']:.1f} s = "
           f"{med['start_warm'] / unit:.2f} · cold {med['start_cold']:.1f} s = {med['start_cold'] / unit:.2f} | "
           f"CPU warm {med['cpu_warm']:.1f} · cold {med['cpu_cold']:.1f} CPU-s | "
           f"restart warm {med['restart_warm']:.1f} s = {med['restart_warm'] / unit:.2f} · cold "
           f"{med['restart_cold']:.1f} s = {med['restart_cold'] / unit:.2f} |")  # fmt: skip
    if nvme:
        row += (f" NVMe first job {med['nvme_first']:.1f} s · resume {med['nvme_resume']:.1f} s = "
                f"{med['nvme_first'] / med['nvme_resume']:.2f} × |")  # fmt: skip
    return json.dumps(out), row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--nvme", action="store_true", help="also the NVMe headline: first job against its resume")
    opts = parser.parse_args()
    report(lambda: measure(opts.pairs, opts.nvme))
