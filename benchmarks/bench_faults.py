"""P9: the fault drill. One 2-node run on the lab suffers, in turn, a priority preemption, a time limit, a
killed rank, a hung node, a slow node and a crashed node, and finishes; per fault: steps lost and seconds
from the fault to the first step past it (the slow node: seconds and steps until hpcft names it); for the
run: ETTR (computed here and by the product's goodput ledger) and whether its losses equal an uninterrupted
run's.

    scripts/dev-cluster up; .venv/bin/python benchmarks/bench_faults.py [--steps 4000] [--time 3]

Every fault is produced through SLURM or the kernel, none by hand-sent signals:
- priority preemption: a job on partition ``high`` needs the nodes of the run on ``low`` (GraceTime 90,
  PreemptMode=REQUEUE): SLURM sends SIGTERM to the step and requeues the job;
- time limit: the run's own ``--time``; SLURM sends the ``--signal`` warning, then ends the job;
- killed rank: SIGKILL to the training process on node2 (what the kernel's OOM killer or a segfault does);
- hung node: SIGSTOP to node2's rank (alive and silent: SLURM sees nothing; hpcft's watchdog at its
  default 90 s finds it, takes the stacks, restarts every rank in the job);
- slow node: node2's rank at 40 % speed (SIGSTOP 150 ms / SIGCONT 100 ms) until hpcft names a straggler;
- crashed node: SIGKILL to every process of namespace node2 (its slurmd, slurmstepd and ranks; its sshd
  listener is spared, nothing here uses it); SLURM notices after SlurmdTimeout (60 s in the lab, about
  100 s in practice), marks the node DOWN, cancels the job DUE TO NODE FAILURE and requeues it; then the
  node's slurmd is started again (a slurmd back within SlurmdTimeout only looks like a slow node to SLURM).
SLURM holds a requeued job 120 s (BeginTime); the drill lifts the hold once the job pends on it (as the
cluster tests do), so the requeue recoveries below exclude that hold and any queue wait — on a real
cluster add both. ETTR = productive step time (the kept steps' own durations) ÷ the time the job ran
(the runs of the job in ``sacct --duplicates``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

HPCFT = [sys.executable, "-m", "hpcft"]
NODE = "node2"


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout.strip()


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def last_step(run: Path) -> int:
    return max((r["step"] for r in records(run) if "loss" in r), default=0)


def starts(run: Path) -> int:
    return sum(1 for r in records(run) if r.get("event") == "train_begin")


def wait(what: str, predicate, timeout: float = 900) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise SystemExit(f"bench_faults: timed out waiting for {what}")
        time.sleep(0.2)


PROCS = "1"  # per node: with 2 ranks a gloo sum has one order, so a resume reproduces the losses bit for bit


def submit(job: Path, runs: Path, name: str, steps: int, save_steps: int, *extra: str) -> tuple[Path, str]:
    out = sh(*HPCFT, "submit", str(job), "--nodes", "2", "--gpus-per-node", PROCS, "--runs-dir", str(runs),
             "-o", f"run.name={name}",
             "-o", f"train.max_steps={steps}", "-o", f"train.save_steps={save_steps}", "-o", "train.eval_steps=null",
             *extra)  # fmt: skip
    job_id = out.split(" as job ")[1].split()[0]
    return max(runs.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime), job_id


def job_ended(job_id: str) -> bool:
    return not sh("squeue", "-h", "-j", job_id, "-o", "%T", check=False)


class HoldLifter(threading.Thread):
    """Lifts SLURM's requeue hold a few seconds after the job pends on it (PREEMPTION.md)."""

    def __init__(self, job_id: str):
        super().__init__(daemon=True)
        self.job_id, self.stop = job_id, False

    def run(self) -> None:
        since = None
        while not self.stop:
            state = sh("squeue", "-h", "-j", self.job_id, "-o", "%T %r", check=False)
            since = (since or time.time()) if state == "PENDING BeginTime" else None
            if since and time.time() - since > 3:
                subprocess.run(["scontrol", "update", f"JobId={self.job_id}", "StartTime=now"], capture_output=True)
                since = None
            time.sleep(0.5)


def preempt() -> None:
    sh("sbatch", "--parsable", "-p", "high", "-N", "2", "--gres=gpu:2", "--mem=1G", "-o", "/dev/null",
       "--wrap", "sleep 5")  # fmt: skip


def kill_rank(run: Path, rank: int = 1) -> None:
    subprocess.run(["kill", "-9", rank_pid(run, rank)], check=True)


def rank_pid(run: Path, rank: int = 1) -> str:
    """The pid of the rank's current process: its newest start line in the node logs (``hpcft logs --rank``)."""
    from hpcft.ops.logs import rank_text

    lines = [x for x in rank_text(run, rank).splitlines() if " pid " in x]
    return lines[-1].rsplit(" pid ", 1)[1]


def hang_rank(run: Path) -> None:
    """SIGSTOP node2's rank: alive and silent; only hpcft's watchdog notices (run.hang_timeout, 90 s)."""
    subprocess.run(["kill", "-STOP", rank_pid(run)], check=True)


def slow_node(run: Path, timeout: float = 300) -> dict:
    """node2's rank at 40 % speed (SIGSTOP 150 ms / SIGCONT 100 ms) until hpcft names it a straggler."""
    pid, t0, step0 = int(rank_pid(run)), time.time(), last_step(run)
    named = None
    while named is None and time.time() - t0 < timeout:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.15)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
        named = next(iter(json.loads((run / "state.json").read_text()).get("stragglers", [])), None)
    return {"node": named and named["node"], "seconds_to_named": round(time.time() - t0, 1),
            "steps_to_named": last_step(run) - step0, "ratio": named and named["ratio"]}  # fmt: skip


def crash_node(min_down_s: float) -> None:
    """SIGKILL every process of the namespace node but its sshd listener; its slurmd comes back once SLURM
    has declared the node DOWN (after SlurmdTimeout; a slurmd back sooner only looks like a slow node)."""
    pids = sh("ip", "netns", "pids", f"slns{NODE[-1]}").split()
    victims = [p for p in pids if "sshd" not in sh("ps", "-o", "comm=", "-p", p, check=False)]
    subprocess.run(["kill", "-9", *victims], capture_output=True)
    killed = time.time()

    def back() -> None:
        while time.time() - killed < min_down_s or "down" not in sh("sinfo", "-h", "-n", NODE, "-o", "%T"):
            time.sleep(1)
        subprocess.run(["nsenter", f"--net=/run/netns/slns{NODE[-1]}", "unshare", "--uts", "sh", "-c",
                        f"hostname {NODE} && exec slurmd -N {NODE}"], check=True)  # fmt: skip

    threading.Thread(target=back, daemon=True).start()


def attempts(run: Path) -> list[list[dict]]:
    """metrics.jsonl split at every train_begin: the step records of each start of the ranks."""
    out: list[list[dict]] = []
    for r in records(run):
        if r.get("event") == "train_begin":
            out.append([r])
        elif "loss" in r and out:
            out[-1].append(r)
    return out


def job_seconds(job_id: str) -> float:
    """Seconds the job ran, over all its runs (``sacct --duplicates``)."""
    from datetime import datetime

    total = 0.0
    for line in sh("sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "Start,End").splitlines():
        start, end = line.split("|")
        if start not in ("Unknown", "None") and end not in ("Unknown", "None"):
            total += (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return total


def productive_seconds(parts: list[list[dict]]) -> float:
    """Sum of each kept step's own duration (its time minus the previous record's in the same attempt)."""
    kept: dict[int, float] = {}
    for part in parts:
        steps = part[1:]
        for prev, rec in itertools.pairwise(steps):
            kept[rec["step"]] = rec["time"] - prev["time"]  # a later attempt's record of a step replaces it
        if steps:
            kept.setdefault(steps[0]["step"], 0.0)
    durations = [d for d in kept.values() if d > 0]
    median = statistics.median(durations)
    return sum(d if d > 0 else median for d in kept.values())  # each attempt's first step: the median


def per_fault(run: Path, faults: list[tuple[str, float]]) -> list[dict]:
    """One row per interruption: kind, steps lost, seconds to the first step past it."""
    parts = attempts(run)
    events = [
        e
        for e in json.loads((run / "state.json").read_text())["events"]
        if e["action"] != "done" and e.get("kind") != "hang"
    ]  # their restart is an event
    injected = list(faults)
    rows = []
    for k, (before, after) in enumerate(itertools.pairwise(parts)):
        reached = before[-1]["step"] if len(before) > 1 else before[0]["start_step"]
        stopped = before[-1]["time"]
        kind = events[k].get("kind", events[k]["action"]) if k < len(events) else "?"
        t_fault = stopped
        if kind != "time limit" and injected:
            name, t_fault = injected.pop(0)
            kind = f"{name} ({kind})"
        past = next((r["time"] for r in after[1:] if r["step"] > reached), None)
        rows.append({"fault": kind, "reached": reached, "resumed_at": after[0]["start_step"],
                     "steps_lost": reached - after[0]["start_step"],
                     "seconds_to_first_step_past": round(past - t_fault, 1) if past else None})  # fmt: skip
    return rows


SURVIVORS = ("-o", "resources.min_nodes=1")  # node1's rank trains on at once when node2 dies (both runs: the same job)


def drill(job: Path, runs: Path, steps: int, save_steps: int, minutes: int, p9: bool) -> tuple[Path, str, list]:
    run, job_id = submit(job, runs, "drill", steps, save_steps, "--partition", "low", "--time", str(minutes),
                         "-o", "run.max_failures=4", *SURVIVORS)  # fmt: skip
    lifter = HoldLifter(job_id)
    lifter.start()
    try:
        faults, slow = (_p9_faults if p9 else _faults)(run, job_id, minutes)
    except BaseException:
        subprocess.run(["scancel", job_id], check=False)  # a drill that broke must not train on, requeued
        raise
    finally:
        lifter.stop = True
    return run, job_id, faults, slow


def _faults(run: Path, job_id: str, minutes: int) -> tuple[list, dict]:
    """Each fault in turn, while the run trains; when each happened, and what the slow node's naming took."""
    faults: list[tuple[str, float]] = []
    wait("step 200", lambda: last_step(run) >= 200)
    faults.append(("priority preemption", time.time()))
    preempt()
    wait("the resumed run", lambda: starts(run) >= 2)
    n = starts(run)
    print("bench_faults: waiting for the time limit", file=sys.stderr)
    wait("the time limit's requeue", lambda: starts(run) > n, timeout=minutes * 60 + 300)
    base = last_step(run)
    wait("200 steps more", lambda: last_step(run) >= base + 200)
    n = starts(run)
    faults.append(("killed rank", time.time()))
    kill_rank(run)
    wait("the in-job restart", lambda: starts(run) > n)
    base = last_step(run)
    wait("200 steps more", lambda: last_step(run) >= base + 200)
    n = starts(run)
    faults.append(("hung node", time.time()))
    hang_rank(run)
    wait("the hang's in-job restart", lambda: starts(run) > n, timeout=600)
    base = last_step(run)
    wait("200 steps more", lambda: last_step(run) >= base + 200)
    slow = slow_node(run)
    base = last_step(run)
    wait("200 steps more", lambda: last_step(run) >= base + 200)
    faults.append(("crashed node", time.time()))
    crash_node(60)
    wait("the job to finish", lambda: job_ended(job_id) and (run / "FINISHED").exists(), timeout=3600)
    return faults, slow


def _p9_faults(run: Path, job_id: str, minutes: int) -> tuple[list, dict]:
    """P9's own faults at P9's rate (2026-12-01: 8 in 945 s of job time): a priority preemption at step 200, a
    killed rank a minute after that resume, a crashed node a minute into the next job run; time limits end every
    other job run (a run is warned a minute before its limit) until the run's steps are done."""
    faults: list[tuple[str, float]] = []
    wait("step 200", lambda: last_step(run) >= 200)
    faults.append(("priority preemption", time.time()))
    preempt()
    wait("the resumed run", lambda: starts(run) >= 2)
    t0 = time.time()
    wait("a minute of training", lambda: time.time() - t0 >= 60)  # placed by time: the rate is the point
    faults.append(("killed rank", time.time()))
    kill_rank(run)
    n = starts(run)
    wait("the in-job restart", lambda: starts(run) > n)
    n = starts(run)
    wait("the time limit's requeue", lambda: starts(run) > n, timeout=minutes * 60 + 300)
    t0 = time.time()
    wait("a minute of training", lambda: time.time() - t0 >= 60)
    faults.append(("crashed node", time.time()))
    crash_node(0)
    wait("the job to finish", lambda: job_ended(job_id) and (run / "FINISHED").exists(), timeout=3600)
    return faults, {}


def losses(run: Path) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in records(run) if "loss" in x}


def measure(args) -> tuple[str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-", dir="/tmp"))
    sh(*HPCFT, "init-demo", str(tmp / "demo"))
    job = tmp / "demo" / "job.yaml"
    run, job_id, faults, slow = drill(job, tmp / "runs", args.steps, args.save_steps, args.time, args.p9)
    worst = None  # --no-reference: the losses are not compared
    if args.reference:
        ref, ref_job = submit(job, tmp / "runs", "reference", args.steps, args.save_steps, *SURVIVORS)
        wait("the reference run", lambda: job_ended(ref_job), timeout=3600)
        a, b = losses(run), losses(ref)
        worst = max(abs(a[s] - b[s]) / (abs(b[s]) or 1.0) for s in b) if a.keys() == b.keys() else float("inf")
    rows = per_fault(run, faults)
    ran = job_seconds(job_id)
    ettr = productive_seconds(attempts(run)) / ran
    book = json.loads(sh(*HPCFT, "status", str(run), "--json"))["goodput"]  # the product's own ledger
    name, equal = "faults-p9" if args.p9 else "faults", None if worst is None else worst <= 1e-5
    result = {"bench": name, "steps": args.steps, "save_steps": args.save_steps, "time_min": args.time,
              "faults": rows, "slow_node": slow, "job_seconds": round(ran, 1), "ettr": round(ettr, 3),
              "ledger": book, "losses_equal_reference": equal, "max_rel_loss_diff": worst}  # fmt: skip
    table = "\n".join(f"| {r['fault']} | {r['reached']} | {r['resumed_at']} | {r['steps_lost']} | "
                      f"{r['seconds_to_first_step_past']} |" for r in rows)  # fmt: skip
    row = (f"| fault | step reached | resumed at | steps lost | s to first step past |\n|---|---|---|---|---|\n"
           f"{table}\n\nETTR {ettr:.3f} over {ran:.0f} s of job time (the product's ledger: {book['ettr']}, "
           f"held {book['held']} s, {book['seconds']}); slow node named: {slow}; losses equal the uninterrupted "
           f"run's: {equal} (max relative difference {worst})")  # fmt: skip
    return json.dumps(result), row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--save-steps", type=int, default=200)
    parser.add_argument("--time", type=int, default=5, help="the run's time limit in minutes (one time-limit fault)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the uninterrupted run the losses are compared with (ETTR only)")  # fmt: skip
    parser.add_argument(
        "--p9",
        action="store_true",
        help="P9's faults at P9's rate, for ETTR (use --time 3 and "
        "--steps for ~15 min of training: a preemption, a killed rank, a crashed node, time limits)",
    )
    report(lambda: measure(parser.parse_args()))


if __name__ == "__main__":
    main()
