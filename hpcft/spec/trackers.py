"""Experiment trackers (``train.report_to``): what the HF Trainer's own integrations are told, and where
the curves end up; pure, shared by the ranks (which set the variables) and ``status`` (which shows where).

Compute nodes often have no internet, so nothing here needs it:

- **tensorboard**: event files in ``RUN/tb`` (``TENSORBOARD_LOGGING_DIR``).
- **wandb**: offline by default (``WANDB_MODE=offline`` unless the job's environment sets it), files in
  ``RUN/wandb``; ``hpcft sync RUN`` uploads them from a login node. The W&B run id is the run
  directory's name with ``WANDB_RESUME=allow``, so every requeue and resume continues one run; a name
  over W&B's 64 characters is cut and ends in a hash of the whole name (``wandb_run_id``).
- **mlflow**: a file store ``RUN/mlruns`` (no database to run; MLflow 3 wants ``MLFLOW_ALLOW_FILE_STORE``
  for it) unless ``train.mlflow_uri`` names a tracking server or database; the run id
  the first start creates is kept in ``RUN/.mlflow-run-id`` and given back as ``MLFLOW_RUN_ID`` later.

Variables the user set in the job's environment win over these defaults.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

TRACKERS = ("tensorboard", "wandb", "mlflow")
TB_DIR = "tb"
WANDB_DIR = "wandb"  # W&B writes RUN/wandb/offline-run-*/
MLFLOW_DIR = "mlruns"
MLFLOW_RUN_ID_FILE = ".mlflow-run-id"


WANDB_ID_MAX = 64  # W&B refuses longer run ids


def wandb_run_id(run: Path) -> str:
    """A W&B run id of the run directory's name (letters, digits, ``_`` and ``-``; at most 64).

    A name that fits stays itself (runs keep the id they started with). A longer one is cut to 55 characters
    plus ``-`` and 8 hex digits of the whole name's SHA-256: cut alone, two runs of one long sweep point
    differ only in the timestamp cut off, and would merge into one W&B run. The name, not the path: a
    run directory's name is unique in its runs directory, and the same wherever it is mounted.
    """
    name = re.sub(r"[^A-Za-z0-9_-]", "-", run.name)
    if len(name) <= WANDB_ID_MAX:
        return name
    digest = hashlib.sha256(run.name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name[: WANDB_ID_MAX - len(digest) - 1]}-{digest}"


def tracker_env(report_to: Sequence[str], run: Path, name: str, *, wandb_project: str | None = None,
                mlflow_uri: str | None = None, mlflow_run_id: str | None = None) -> dict[str, str]:  # fmt: skip
    """The variables the HF integrations read for ``report_to`` (a user's own value of each wins: see ``apply``)."""
    env: dict[str, str] = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(run / TB_DIR)
    if "wandb" in report_to:
        env.update(WANDB_MODE="offline", WANDB_DIR=str(run), WANDB_PROJECT=wandb_project or name,
                   WANDB_RUN_ID=wandb_run_id(run), WANDB_RESUME="allow", WANDB_NAME=run.name)  # fmt: skip
    if "mlflow" in report_to:
        env.update(MLFLOW_TRACKING_URI=mlflow_uri or (run / MLFLOW_DIR).as_uri(), MLFLOW_EXPERIMENT_NAME=name,
                   MLFLOW_RUN_NAME=run.name)  # fmt: skip
        if not mlflow_uri:  # MLflow 3 refuses its file store unless asked (it is "in maintenance mode")
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        if mlflow_run_id:
            env["MLFLOW_RUN_ID"] = mlflow_run_id
    return env


def apply(defaults: Mapping[str, str], environ: dict[str, str]) -> dict[str, str]:
    """Set each default that ``environ`` does not have yet (or has empty); the variables set."""
    added = {k: v for k, v in defaults.items() if not environ.get(k)}
    environ.update(added)
    return added


def tracker_links(report_to: Sequence[str], run: Path, *, mlflow_uri: str | None = None) -> list[str]:
    """Where a user looks at the curves, one line each (``hpcft status RUN``)."""
    links = []
    if "tensorboard" in report_to:
        links.append(f"tensorboard --logdir {run / TB_DIR}")
    if "wandb" in report_to:
        offline = sorted(p.name for p in (run / WANDB_DIR).glob("offline-run-*")) if (run / WANDB_DIR).is_dir() else []
        links.append(f"wandb run {wandb_run_id(run)}" + (f": {len(offline)} offline segment(s), upload with "
                     f"`hpcft sync {run.name}`" if offline else ""))  # fmt: skip
    if "mlflow" in report_to:
        links.append(f"mlflow ui --backend-store-uri {mlflow_uri or (run / MLFLOW_DIR).as_uri()}")
    return links
