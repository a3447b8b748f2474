"""Cluster tier: `hpcft sweep` as one SLURM job array on the lab; the expectations come from sacct and from each
point's own files, not from hpcft's account of them."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cluster.test_preemption import _state, _steps
from tests.conftest import hpcft, release_requeued, wait_until

pytestmark = pytest.mark.cluster


def array_tasks(array: str) -> list[dict[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [dict(zip(("id", "state", "start", "end"), line.split("|"), strict=True)) for line in out.split()]


def test_grid_runs_as_one_array_at_most_n_at_once(lab, demo_dir, runs_dir):
    out = hpcft("sweep", str(demo_dir / "job.yaml"), "--gpus-per-node", "1", "-o", "train.lr=1e-3,3e-4",
                "-o", "train.seed=1,2", "-o", "train.max_steps=10", "-o", "train.eval_steps=5", "--max-parallel", "2",
                "--runs-dir", str(runs_dir), "--wait", env={"COLUMNS": "200"}, timeout=900)  # fmt: skip
    array = out.stdout.split(" as job array ")[1].split()[0]
    tasks = array_tasks(array)
    assert sorted(t["id"] for t in tasks) == [f"{array}_{i}" for i in range(4)]
    assert all(t["state"] == "COMPLETED" for t in tasks)
    # %2: at no task's start were more than 2 tasks running (SLURM's own start/end times).
    assert all(sum(u["start"] <= t["start"] < u["end"] for u in tasks) <= 2 for t in tasks), tasks
    runs = sorted(p.parent for p in runs_dir.glob("*/spec.yaml"))
    assert [r.name.rsplit("-", 2)[0] for r in runs] == ["demo-lr1e-3-seed1", "demo-lr1e-3-seed2",
                                                        "demo-lr3e-4-seed1", "demo-lr3e-4-seed2"]  # fmt: skip
    evals = {}
    for run in runs:
        spec = (run / "spec.yaml").read_text()
        assert "lr: " in spec and (run / "FINISHED").is_file()
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        evals[run.name] = [r["eval_loss"] for r in records if "eval_loss" in r][-1]
    best = min(evals, key=evals.get)
    assert f"best eval loss {evals[best]:.4f}: {best}" in out.stdout
    table = hpcft("status", "--runs-dir", str(runs_dir), env={"COLUMNS": "250"}).stdout
    assert "4 points, 4 ended" in table and best in table.splitlines()[-1]
    assert all(json.loads(hpcft("status", r.name, "--runs-dir", str(runs_dir), "--json").stdout)["state"]
               == "COMPLETED" for r in runs)  # fmt: skip


def test_a_preempted_point_requeues_and_resumes_on_its_own(lab, demo_dir, runs_dir):
    out = hpcft("sweep", str(demo_dir / "job.yaml"), "--partition", "low", "-o", "train.lr=1e-3,3e-4",
                "-o", "train.max_steps=100", "-o", "train.save_steps=100000", "-o", "train.eval_steps=null",
                "--runs-dir", str(runs_dir)).stdout  # fmt: skip
    array = out.split(" as job array ")[1].split()[0]
    runs = sorted(p.parent for p in runs_dir.glob("*/spec.yaml"))
    for run in runs:
        wait_until("step 10 on both points", lambda run=run: any(r.get("step", 0) >= 10 for r in _steps(run)),
                   timeout=300)  # fmt: skip
    node = _state(runs[0])["jobs"][-1]["nodes"]
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "1", "-w", node, "--gres=gpu:2",
                                "--mem=1G", "-o", "/dev/null", "--wrap", "sleep 2"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    try:
        event = wait_until("the preemption of point 0", lambda: next((e for e in _state(runs[0]).get("events", [])
                                                                     if e.get("kind") == "preemption"), None),
                           timeout=120)  # fmt: skip
        assert event["action"] == "requeue" and event["job"] == f"{array}_0"
        saved = max(r["step"] for r in _steps(runs[0]) if "loss" in r)
        task = f"{array}_0"
        release_requeued(task)
        for run in runs:
            wait_until("COMPLETED", lambda run=run: json.loads(hpcft("status", str(run), "--json").stdout)["state"]
                       == "COMPLETED", timeout=600, interval=2)  # fmt: skip
    finally:
        subprocess.run(["scancel", preemptor], check=False)
    begins = [[r["start_step"] for r in _steps(run) if r.get("event") == "train_begin"] for run in runs]
    assert begins == [[0, saved], [0]]  # point 0 resumed at the step it reached; point 1 ran on untouched
    assert _state(runs[0])["preemptions"] == 1 and not _state(runs[1]).get("preemptions")
