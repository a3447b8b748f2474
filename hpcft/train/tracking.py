"""The ranks' side of ``train.report_to`` (``hpcft.spec.trackers``): the HF integrations' variables set before
the Trainer exists, and the MLflow run id kept for the next start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpcft.rundir import store
from hpcft.spec import JobSpec, trackers

log = logging.getLogger("hpcft.train")


def setup_env(spec: JobSpec, run: Path) -> None:
    """Set the trackers' variables in this rank's environment (those the job's environment already has win)."""
    t = spec.train
    if not t.report_to:
        return
    mlflow_id = (store.read_text(run / trackers.MLFLOW_RUN_ID_FILE) or "").strip() or None
    env = trackers.tracker_env(t.report_to, run, spec.run.name, wandb_project=t.wandb_project,
                               mlflow_uri=t.mlflow_uri, mlflow_run_id=mlflow_id)  # fmt: skip
    added = trackers.apply(env, os.environ)  # type: ignore[arg-type]
    if "WANDB_MODE" not in added and "wandb" in t.report_to:
        log.info("W&B mode %s (from the job's environment)", os.environ["WANDB_MODE"])


def make_tracker_callback(spec: JobSpec, run: Path):
    """A TrainerCallback that, on rank 0, records the MLflow run the first start created (None: no MLflow)."""
    if "mlflow" not in spec.train.report_to:
        return None
    from transformers import TrainerCallback

    class KeepMlflowRun(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # after HF's MLflowCallback started the run
            if not state.is_world_process_zero or (run / trackers.MLFLOW_RUN_ID_FILE).exists():
                return
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                store.write_atomic(run / trackers.MLFLOW_RUN_ID_FILE, active.info.run_id + "\n")

    return KeepMlflowRun()
