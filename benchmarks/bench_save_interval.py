"""P17: ``train.save_steps: auto`` against a fixed ``save_steps`` under the same faults, side by side.

Two identical 2-node runs of the demo (one rank per node), started together on two clusters of the lab so
that they share the machine alike: one with a hand-chosen ``train.save_steps`` (200), one with ``auto``
bounded by ``save_steps_min: 10`` and ``save_steps_max`` = the fixed value (its first job, with no save
measured yet, saves as the fixed run does). Each run's rank on the second node is SIGKILLed (what an OOM
kill or a segfault does) every ``--every`` seconds of training (``--seed``: at exponentially distributed
times of that mean, the same for both runs); ``run.restart_in_job: false`` makes each
fault fail the job, SLURM requeues it (``--requeue``; the requeue hold is lifted after 3 s, as the cluster
tests do), and every new job start chooses ``auto`` again from the run's own numbers.

Per run: faults, steps lost, ETTR from the product's ledger (``hpcft status RUN --json``) and the auto
run's choices; and the interval the formula gives for the drill's own fault rate at the end (Daly, from
the ledger's held time ÷ faults, the measured save and step time), which the last choice should be within
20 % of.

    scripts/dev-cluster up; .venv/bin/python benchmarks/bench_save_interval.py [--steps 4000] [--every 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

HPCFT = [sys.executable, "-m", "hpcft"]
LAB = os.environ.get("SLURMLAB_DIR", "/tmp/hpcft-lab")
CLUSTERS = {"fixed": f"{LAB}/etc/slurm.conf", "auto": f"{LAB}/etc/lab2/slurm.conf"}


def sh(env: dict, *argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check, env=env).stdout.strip()


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # the last line may be half-written
    return [json.loads(x) for x in lines if x]


def state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


class Drill(threading.Thread):
    """One run: submit, kill its second rank after ``gaps[k]`` s of its k-th start's training, lift requeue
    holds, until done."""

    def __init__(self, name: str, job: Path, runs: Path, steps: int, gaps: list[float], save: list[str]) -> None:
        super().__init__(daemon=True)
        self.name, self.gaps = name, list(gaps)
        self.env = {**os.environ, "SLURM_CONF": CLUSTERS[name], "OMP_NUM_THREADS": "1"}
        out = sh(self.env, *HPCFT, "submit", str(job), "--nodes", "2", "--gpus-per-node", "1", "--runs-dir",
                 str(runs), "-o", f"run.name={name}", "-o", f"train.max_steps={steps}", "-o", "train.eval_steps=null",
                 "-o", "run.restart_in_job=false", "-o", "run.max_failures=30", *save)  # fmt: skip
        self.job = out.split(" as job ")[1].split()[0]
        self.run_dir = max(runs.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
        self.kills, self.choices, self.error = 0, [], None

    def ended(self) -> bool:
        return not sh(self.env, "squeue", "-h", "-j", self.job, "-o", "%T", check=False)

    def lift_hold(self) -> None:
        if sh(self.env, "squeue", "-h", "-j", self.job, "-o", "%T %r", check=False) == "PENDING BeginTime":
            time.sleep(3)  # the old run's teardown (tests/conftest.py: release_requeued)
            subprocess.run(["scontrol", "update", f"JobId={self.job}", "StartTime=now"], capture_output=True,
                           env=self.env)  # fmt: skip

    def run(self) -> None:
        try:
            self._drill()
        except Exception as e:  # reported by measure
            self.error = e

    def _drill(self) -> None:
        seen = 0
        while not (self.ended() and (self.run_dir / "FINISHED").exists()):
            self.lift_hold()
            recs = records(self.run_dir)
            begins = [i for i, r in enumerate(recs) if r.get("event") == "train_begin"]
            if not begins:
                time.sleep(0.5)
                continue
            if len(begins) > seen:  # a new start: note auto's choice for it
                seen = len(begins)
                self.choices.append((state(self.run_dir).get("auto_save") or {}).get("save_steps"))
            steps = [r for r in recs[begins[-1] :] if "loss" in r]
            every = self.gaps[min(self.kills, len(self.gaps) - 1)]  # this start's seconds of training to its fault
            if steps and time.time() - steps[0]["time"] >= every and len(begins) == seen:
                pid = self.rank_pid()
                if pid and subprocess.run(["kill", "-9", pid], capture_output=True).returncode == 0:
                    self.kills += 1
                    while len([r for r in records(self.run_dir) if r.get("event") == "train_begin"]) == seen \
                            and not self.ended():  # fmt: skip
                        self.lift_hold()
                        time.sleep(0.5)
            time.sleep(0.5)

    def rank_pid(self) -> str | None:
        """The newest pid rank 1 logged (``hpcft logs --rank 1``'s source: the node logs)."""
        from hpcft.ops.logs import rank_text

        lines = [x for x in rank_text(self.run_dir, 1).splitlines() if " pid " in x]
        return lines[-1].rsplit(" pid ", 1)[1].split()[0] if lines else None


def summary(d: Drill) -> dict:
    st = json.loads(sh(d.env, *HPCFT, "status", str(d.run_dir), "--json"))
    book = st["goodput"]
    recs = records(d.run_dir)
    begins = [r for r in recs if r.get("event") == "train_begin"]
    trained = sum(1 for r in recs if "loss" in r)
    final = state(d.run_dir)
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(recs)
            if "loss" in a and "loss" in b and b["step"] == a["step"] + 1]  # fmt: skip
    return {"kills": d.kills, "faults": len([e for e in final.get("events", []) if e.get("action") == "requeue"]),
            "starts": len(begins), "steps_trained": trained, "steps_lost": trained - max(r["step"] for r in recs
            if "loss" in r), "ettr": book["ettr"], "held_s": book["held"], "seconds": book["seconds"],
            "save_s": statistics.median(r["seconds"] for r in recs if r.get("event") == "save"),
            "step_s": round(statistics.median(gaps), 4),
            "choices": d.choices}  # fmt: skip


def measure(args) -> tuple[str, str]:
    from hpcft.plan import save_interval

    tmp = Path(tempfile.mkdtemp(prefix="bench-save-", dir="/tmp"))
    sh(dict(os.environ), *HPCFT, "init-demo", str(tmp / "demo"))
    job = tmp / "demo" / "job.yaml"
    fixed = ["-o", f"train.save_steps={args.fixed}"]
    auto = ["-o", "train.save_steps=auto", "-o", "train.save_steps_min=10", "-o", f"train.save_steps_max={args.fixed}"]
    # The same fault times for both runs: every ``--every`` s, or (``--seed``) exponentially distributed with that
    # mean, as independent faults are — a fixed period hits a fixed save_steps at the same phase each time.
    rng = random.Random(args.seed)
    gaps = [args.every if args.seed is None else max(5.0, rng.expovariate(1 / args.every)) for _ in range(100)]
    drills = [Drill("fixed", job, tmp / "runs", args.steps, gaps, fixed),
              Drill("auto", job, tmp / "runs", args.steps, gaps, auto)]  # fmt: skip
    for d in drills:
        d.start()
    for d in drills:
        d.join(timeout=3600)
        if d.error or d.is_alive():
            raise SystemExit(f"bench_save_interval: the {d.name} run failed: {d.error or 'timed out'}")
    out = {d.name: summary(d) for d in drills}
    a = out["auto"]
    faults = max(1, a["faults"])
    formula = save_interval.daly_interval(a["save_s"], a["held_s"] / faults) / a["step_s"]
    last = next((c for c in reversed(a["choices"]) if c), None)
    result = {"bench": "save_interval", "steps": args.steps, "every_s": args.every, "seed": args.seed,
              "fault_gaps_s": [round(g, 1) for g in gaps[: max(d.kills for d in drills)]],
              "fixed_save_steps": args.fixed,
              **out, "formula_save_steps": round(formula), "last_choice_within_20pct":
              bool(last) and abs(last - formula) <= 0.2 * formula}  # fmt: skip
    f, a = out["fixed"], out["auto"]
    row = (f"| run | faults | steps lost | ETTR | save choices |\n|---|---|---|---|---|\n"
           f"| fixed {args.fixed} | {f['faults']} | {f['steps_lost']} | {f['ettr']} | {args.fixed} |\n"
           f"| auto 10…{args.fixed} | {a['faults']} | {a['steps_lost']} | {a['ettr']} | {a['choices']} |\n\n"
           f"The formula for the auto run's own numbers (save {a['save_s']} s, step {a['step_s']} s, MTBF "
           f"{a['held_s'] / faults:.0f} s): every {formula:.0f} steps; the last choice {last} "
           f"({'within' if result['last_choice_within_20pct'] else 'NOT within'} 20 %)")  # fmt: skip
    return json.dumps(result), row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=float, default=30.0, help="seconds of training between faults (the mean)")
    parser.add_argument("--seed", type=int, default=None, help="random fault times (exponential), this seed")
    parser.add_argument("--fixed", type=int, default=200, help="the hand-chosen save_steps (and auto's maximum)")
    report(lambda: measure(parser.parse_args()))


if __name__ == "__main__":
    main()
