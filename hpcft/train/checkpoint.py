"""Checkpoints on the shared filesystem: where to resume from, and the end of a run.

Decides which checkpoint a (re)started job continues from and writes the run's final outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpcft import runs
from hpcft.spec import JobSpec

log = logging.getLogger("hpcft.train")


def output_dir(spec: JobSpec, run: Path) -> str:
    """Where the Trainer writes ``checkpoint-N`` directories."""
    return spec.train.output or str(run / "checkpoints")


def resume_point(spec: JobSpec, run: Path) -> str | None:
    """The newest checkpoint to continue from, or None for a fresh start."""
    from transformers.trainer_utils import get_last_checkpoint

    out = output_dir(spec, run)
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    if last:
        log.info("resuming from %s", last)
    return last


def finish(trainer, run: Path) -> None:
    """Save the final model to ``RUN/model`` and mark the run ``FINISHED`` (rank 0 writes the marker)."""
    trainer.save_model(str(run / "model"))
    if trainer.is_world_process_zero():
        runs.write_atomic(run / runs.FINISHED_FILE, f"{trainer.state.global_step}\n")
        log.info("finished at step %d", trainer.state.global_step)
