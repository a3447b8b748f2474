"""``hpcft sync RUN``: the run's offline W&B segments, uploaded by W&B's own ``wandb sync``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hpcft.errors import RunError
from hpcft.spec import trackers


def offline_segments(run: Path) -> list[Path]:
    """``RUN/wandb/offline-run-*`` directories, oldest first; an error when there are none."""
    base = run / trackers.WANDB_DIR
    found = sorted(p for p in base.glob("offline-run-*") if p.is_dir()) if base.is_dir() else []
    if not found:
        raise RunError(f"{run.name} has no offline W&B data under {base}", hint="the job needs train.report_to: "
                       "[wandb]; with WANDB_MODE=online it uploaded already")  # fmt: skip
    return found


def upload(segments: list[Path]) -> int:
    """Run ``wandb sync`` on ``segments``; its exit status."""
    wandb = shutil.which("wandb")
    if wandb is None:
        raise RunError("`wandb` is not installed here", hint="pip install wandb, then `wandb login`")
    return subprocess.run([wandb, "sync", *map(str, segments)], stdin=subprocess.DEVNULL).returncode
