"""Cluster tier: watching real runs on the 2-node SLURM lab — status, logs -f, plot, doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcft.ops import plot
from hpcft.rundir import store as runs
from tests.conftest import hpcft, import_or_require, wait_until

pytestmark = pytest.mark.cluster


def status(run: str, runs_dir: Path) -> dict:
    return json.loads(hpcft("status", run, "--runs-dir", str(runs_dir), "--json").stdout)


def start(*args: str) -> tuple[subprocess.Popen, list[tuple[float, str]]]:
    """Start the CLI in the background; a thread records (arrival time, line) of its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcft", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.time(), line))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def test_status_logs_follow_and_plot_of_a_live_run(lab, demo_dir, runs_dir, tmp_path):
    out = hpcft(
        "submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--runs-dir", str(runs_dir), "-o", "train.max_steps=40"
    ).stdout
    run = next(runs_dir.iterdir())
    job = out.split(" as job ")[1].split()[0]
    follow, followed = start("logs", run.name, "-f", "--runs-dir", str(runs_dir))
    watch, watched = start("status", run.name, "--watch", "--interval", "1", "--runs-dir", str(runs_dir))

    live = wait_until(
        "a RUNNING status with a step",
        lambda: (s := status(run.name, runs_dir))["state"] == "RUNNING" and s["step"] and s,
    )
    assert live["total_steps"] == 40 and live["nodes"] == "2" and live["job_ids"] == [job]
    assert 0 < live["step"] < 40 and live["restarts"] == 0 and not live["finished"]
    trained_lines_while_running = [ln for _, ln in followed if "hpcft.train" in ln]
    assert trained_lines_while_running, "logs -f showed nothing of the training while the job ran"

    done = wait_until("COMPLETED", lambda: (s := status(run.name, runs_dir))["state"] == "COMPLETED" and s, interval=2)
    ended_at = time.time()
    assert (done["step"], done["checkpoint"], done["restarts"], done["finished"]) == (40, "checkpoint-40", 0, True)
    assert done["eval_loss"] is not None and done["nodelist"] == lab.nodelist

    # Both followers end by themselves once the job has ended (logs asks SLURM at most every 5 s).
    assert follow.wait(timeout=60) == 0 and watch.wait(timeout=60) == 0
    text = "".join(ln for _, ln in followed)
    assert "finished at step 40" in text
    first_train_line = next(t for t, ln in followed if "hpcft.train" in ln)
    assert first_train_line < ended_at - 1, "lines arrived only after the job had ended"
    assert "COMPLETED" in "".join(ln for _, ln in watched)

    # One node's ranks: each node shows two ranks, and never the other node's.
    by_node = {n: hpcft("logs", run.name, "--node", n, "--runs-dir", str(runs_dir)).stdout for n in lab.nodes}
    ranks = {
        n: {ln.split("]")[0] + "]" for ln in t.splitlines() if ln.startswith("[rank-")} for n, t in by_node.items()
    }
    first, second = (ranks[n] for n in lab.nodes)
    assert len(first) == len(second) == 2 and not first & second
    assert (
        hpcft("logs", run.name, "--job", job, "--runs-dir", str(runs_dir)).stdout
        == (run / "logs" / f"slurm-{job}.out").read_text()
    )

    png = tmp_path / "plot.png"
    assert f"wrote {png}" in hpcft("plot", run.name, "--out", str(png), "--runs-dir", str(runs_dir)).stdout
    matplotlib_image = import_or_require("matplotlib.image")  # the [plot] extra: required under CI=true
    assert matplotlib_image.imread(png).shape[2] in (3, 4)  # decodes as an RGB(A) image
    series = plot.extract_series(runs.read_metrics(run))
    assert [s for s, _ in series.train_loss] == list(range(1, 41))
    assert [s for s, _ in series.eval_loss] == [10, 20, 30, 40] and series.restarts == []


def test_doctor_passes_on_the_two_lab_nodes(lab, demo_dir, runs_dir):
    proc = hpcft(
        "doctor",
        str(demo_dir / "job.yaml"),
        "--nodes",
        "2",
        "--runs-dir",
        str(runs_dir),
        "--timeout",
        "240",
        env={"COLUMNS": "250"},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("rendezvous", "all-reduce", "run dir shared", "HF cache shared", "GPU count", "torch version"):
        assert check in proc.stdout
    assert "FAIL" not in proc.stdout
    report = json.loads(next(runs_dir.glob("doctor-*/doctor/report.json")).read_text())
    assert {n["host"] for n in report["nodes"]} == set(lab.nodes) and report["world_size"] == 4
    assert all(c["status"] in ("pass", "skip") for c in report["checks"])


def test_doctor_fails_clearly_when_a_node_sees_another_directory(lab, runs_dir, tmp_path):
    """A node whose view of a shared path differs makes the doctor fail with that node's name — not hang.

    What is simulated, honestly: the lab's nodes share one filesystem, so no node can really lack
    the run directory, and slurmd's mount namespace cannot be changed per node. The probe therefore
    checks an extra directory given as ``--shared-dir DIR/view-{node}``: ``{node}`` becomes each
    node's name, so node 0 writes its marker into ``view-<its name>`` while the other node looks in
    ``view-<the other's name>`` — what a node that mounts something else (or nothing) at the path sees. The
    check is the same code that checks the run directory; the case where a node cannot see the
    run directory at all (hpcft node's preflight stops the job) is covered by a unit test of the
    doctor's summary of the job output (tests/unit/test_monitor.py).
    """
    view = tmp_path / "view-{node}"
    t0 = time.time()
    proc = hpcft(
        "doctor",
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--runs-dir",
        str(runs_dir),
        "--shared-dir",
        str(view),
        "--timeout",
        "240",
        env={"COLUMNS": "250"},
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.time() - t0 < 240
    assert "Traceback" not in proc.stderr
    failing = [ln for ln in proc.stdout.splitlines() if "FAIL" in ln]
    assert len(failing) == 1 and "dir shared" in failing[0], proc.stdout
    assert "cannot read the marker node" in proc.stdout
    assert "run dir shared" in proc.stdout  # the real run directory itself passed
