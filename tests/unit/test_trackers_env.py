"""What the HF tracker integrations are told (hpcft.spec.trackers), and that the job's own variables win."""

from __future__ import annotations

import re
from pathlib import Path

from hpcft.spec import trackers

RUN = Path("/shared/runs/sft-20261201-101500")


def test_defaults_are_offline_and_in_the_run_directory():
    env = trackers.tracker_env(["tensorboard", "wandb", "mlflow"], RUN, "sft")
    assert env == {
        "TENSORBOARD_LOGGING_DIR": "/shared/runs/sft-20261201-101500/tb",
        "WANDB_MODE": "offline", "WANDB_DIR": str(RUN), "WANDB_PROJECT": "sft",
        "WANDB_RUN_ID": "sft-20261201-101500", "WANDB_RESUME": "allow", "WANDB_NAME": RUN.name,
        "MLFLOW_TRACKING_URI": "file:///shared/runs/sft-20261201-101500/mlruns", "MLFLOW_EXPERIMENT_NAME": "sft",
        "MLFLOW_RUN_NAME": RUN.name, "MLFLOW_ALLOW_FILE_STORE": "true",
    }  # fmt: skip
    assert trackers.tracker_env([], RUN, "sft") == {}


def test_a_tracking_server_and_a_kept_mlflow_run():
    env = trackers.tracker_env(["mlflow"], RUN, "sft", mlflow_uri="http://mlflow:5000", mlflow_run_id="abc123")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["MLFLOW_RUN_ID"] == "abc123"
    assert "MLFLOW_ALLOW_FILE_STORE" not in env


def test_the_jobs_own_variables_win_and_empty_counts_as_unset():
    environ = {"WANDB_MODE": "online", "WANDB_PROJECT": ""}
    added = trackers.apply(trackers.tracker_env(["wandb"], RUN, "sft"), environ)
    assert environ["WANDB_MODE"] == "online" and "WANDB_MODE" not in added
    assert environ["WANDB_PROJECT"] == "sft"


def test_wandb_run_ids_use_only_the_characters_wandb_accepts():
    assert trackers.wandb_run_id(Path("/r/my.run+x-20261201")) == "my-run-x-20261201"
    assert len(trackers.wandb_run_id(Path("/r/" + "a" * 100))) == 64


def test_long_run_names_sharing_their_first_64_characters_get_their_own_wandb_ids():
    """A long sweep-point name run twice in a day: the two runs must not merge into one W&B run (issue #25, item 16)."""
    point = "llama3-8b-instruct-sft-alpaca-lr3e-5-r16-alpha32-dropout0.05-warmup100"  # 72 characters
    morning = Path(f"/shared/runs/{point}-20261201-091500")
    evening = Path(f"/shared/runs/{point}-20261201-183000")
    ids = [trackers.wandb_run_id(morning), trackers.wandb_run_id(evening)]
    assert ids[0] != ids[1]
    for run_id in ids:
        assert len(run_id) <= 64 and re.fullmatch(r"[A-Za-z0-9_-]+", run_id), run_id
        assert run_id.startswith("llama3-8b-instruct-sft-alpaca-lr3e-5-r16-alpha32"), run_id  # readable
    # Stable for the run: every requeue and resume (and `hpcft status`, wherever the runs directory is mounted).
    assert trackers.wandb_run_id(Path("/gpfs/home/me/runs") / morning.name) == ids[0]
    assert trackers.tracker_env(["wandb"], evening, "sft")["WANDB_RUN_ID"] == ids[1]


def test_short_run_names_keep_the_wandb_id_they_had():
    """Runs started before long names got a hash keep their W&B run across a resume."""
    assert trackers.wandb_run_id(Path("/r/llama-3.1-sft-20261201-101500")) == "llama-3-1-sft-20261201-101500"
    assert trackers.wandb_run_id(Path("/r/" + "b" * 64)) == "b" * 64
