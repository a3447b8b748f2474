"""Trackers (train.report_to) through the HF Trainer's own integrations, no service: TensorBoard event files read
back with TensorBoard's reader, W&B offline files parsed back, MLflow's file store read with its client; one
curve across a resume; `hpcft sync`."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests import wandb_files
from tests.conftest import hpcft

pytestmark = pytest.mark.train


def test_tensorboard_wandb_and_mlflow_continue_one_curve_across_a_resume(demo_dir, runs_dir, tmp_path):
    hpcft(
        "submit",
        str(demo_dir / "job.yaml"),
        "--backend",
        "local",
        "--wait",
        "--runs-dir",
        str(runs_dir),
        "-o",
        "train.report_to=[tensorboard, wandb, mlflow]",
        "-o",
        "train.max_steps=10",
        "-o",
        "train.eval_steps=null",
        env={"WANDB_MODE": ""},
        timeout=900,
    )  # fmt: skip -- WANDB_MODE empty = unset: offline, hpcft's default
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    hpcft("resume", str(run), "-o", "train.max_steps=20", "--wait", timeout=900)
    logged = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss" in r}  # fmt: skip
    assert sorted(logged) == list(range(1, 21))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    points = tb.Scalars("train/loss")
    assert [p.step for p in points] == list(range(1, 21))  # one curve, two processes' event files
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2
    assert [p.value for p in points] == pytest.approx([logged[s] for s in range(1, 21)], rel=1e-6)

    segments = sorted((run / "wandb").glob("offline-run-*/*.wandb"))
    assert len(segments) == 2  # one offline segment per start, both of the one W&B run
    assert {wandb_files.run_id(f) for f in segments} == {run.name}
    rows = [r for f in segments for r in wandb_files.history(f) if "train/loss" in r]
    assert [r["train/global_step"] for r in rows] == list(range(1, 21))
    assert [r["train/loss"] for r in rows] == pytest.approx([logged[s] for s in range(1, 21)], rel=1e-6)

    # MLflow, read with its own client: one run (its id kept in the run directory) holds all 20 steps.
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "demo"]
    (ml_run,) = client.search_runs([experiment.experiment_id])
    assert ml_run.info.run_id == (run / ".mlflow-run-id").read_text().strip()
    history = sorted(client.get_metric_history(ml_run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 21))
    assert [m.value for m in history] == pytest.approx([logged[s] for s in range(1, 21)], rel=1e-6)

    st = json.loads(hpcft("status", run.name, "--runs-dir", str(runs_dir), "--json").stdout)
    assert st["trackers"] == [f"tensorboard --logdir {run / 'tb'}",
                              f"wandb run {run.name}: 2 offline segment(s), upload with `hpcft sync {run.name}`",
                              f"mlflow ui --backend-store-uri {(run / 'mlruns').as_uri()}"]  # fmt: skip

    # `hpcft sync` hands both segments to W&B's own `wandb sync` (a stand-in on PATH records what it got:
    # the real upload needs the service).
    fake = tmp_path / "bin" / "wandb"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'argv'}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = hpcft("sync", run.name, "--runs-dir", str(runs_dir), env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert "uploading 2 offline W&B segment(s)" in out.stdout
    assert (tmp_path / "argv").read_text().split() == ["sync", *[str(f.parent) for f in segments]]


def test_unknown_tracker_is_refused(demo_dir, runs_dir):
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--backend", "local", "--runs-dir", str(runs_dir),
                "-o", "train.report_to=[tensorbord]", check=False)  # fmt: skip
    assert out.returncode != 0
    assert "train.report_to: 'tensorbord' is not one of tensorboard, wandb, mlflow" in out.stderr
    assert not list(runs_dir.iterdir())
