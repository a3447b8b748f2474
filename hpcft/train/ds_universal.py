"""Resuming a ZeRO run on another world size: DeepSpeed's universal checkpoint, and two fixes its ZeRO-3 loader needs.

ZeRO checkpoints hold each rank's partition of the optimizer state, so a job with another number of
ranks cannot load them as they are (DeepSpeed#2898). DeepSpeed's ``ds_to_universal`` rewrites them per
parameter; the engine loads that at any world size when the config has ``checkpoint.load_universal``
(read in ``runtime/config.py``; a top-level ``load_universal_checkpoint`` is ignored). Here:

- ``to_universal`` converts ``checkpoint-N/global_stepN`` once (rank 0; the others wait), into a
  staging directory renamed into place, then writes ``checkpoint-N/latest_universal``, which the engine
  reads instead of ``latest`` — the HF Trainer passes no tag (``deepspeed_load_checkpoint``), so
  nothing else changes. ``--inject_missing_state``: HF models have no ``universal_checkpoint_info`` and
  the ZeRO-1/2 path asserts on it otherwise (ds_to_universal.py; the reason for DeepSpeed#6470's
  "HF Trainer cannot load universal checkpoints").
- ``patch_zero3_universal_load`` works around DeepSpeed 0.19.8's
  ``DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3``
  (runtime/zero/stage3.py ~3653-3691): (a) one ``step`` tensor is given to every sub-group, and torch's
  Adam/AdamW increment it in place, so with the Trainer's two parameter groups it counts two per step
  and Adam's bias correction goes wrong after the resume (losses drift from the second step on); (b) the
  hyper-parameters of parameter group 0 are copied onto every group (the no-decay group gets weight
  decay). ZeRO-1/2 load both per group. Measured on this stack: ZeRO-3 2→1 ranks drifted by 3.6e-3
  within 9 steps without the fix and matched an uninterrupted run exactly with it.

The data order continues because ``hpcft resume`` keeps the global batch (``train.grad_accum`` scaled):
the Trainer skips the same samples at any world size.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.rundir import lifecycle, store

log = logging.getLogger("hpcft.universal")

LATEST_UNIVERSAL = "latest_universal"  # the engine's name (deepspeed/runtime/engine.py)
STAGING = ".universal-staging"


def universal_tag(checkpoint: Path) -> str:
    """``global_stepN_universal``: the folder of a checkpoint's universal form."""
    tag = (store.read_text(checkpoint / "latest") or "").strip()
    if not tag or "/" in tag or not (checkpoint / tag).is_dir():
        raise HpcftError(f"{checkpoint} has no DeepSpeed checkpoint (no valid 'latest' file) to convert",
                         hint="resume with the world size that wrote it, or `hpcft export` it")  # fmt: skip
    return f"{tag}_universal"


FAILED = ".universal-failed"  # rank 0's conversion failed: the reason, for the ranks that wait for it


def to_universal(checkpoint: Path, is_rank0: bool, poll_s: float = 2.0) -> None:
    """Convert ``checkpoint`` to DeepSpeed's universal format unless done already (rank 0; every rank calls it).

    The other ranks wait for the result on the filesystem, not in a collective: a conversion of a large
    model takes longer than the process group's timeout (HF's ``ddp_timeout``, 30 minutes), after which a
    barrier would end every rank and the retry would convert again from the start. The result is kept
    (``latest_universal``): a later start uses it at once.
    """
    if not is_rank0:
        _wait_for_conversion(checkpoint, poll_s)
        return
    if (checkpoint / LATEST_UNIVERSAL).is_file():
        return
    try:
        _convert(checkpoint, universal_tag(checkpoint))
    except HpcftError as e:  # stamped with this job segment: a later one's ranks wait for their own rank 0
        store.write_atomic(checkpoint / FAILED, f"{lifecycle.segment(os.environ)} {e.message}\n")
        raise


def _convert(checkpoint: Path, tag: str) -> None:
    staging = checkpoint / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    argv = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
            str(checkpoint / tag.removesuffix("_universal")), "--output_folder", str(staging / tag),
            "--inject_missing_state", "--num_extract_workers", "2", "--num_merge_workers", "1"]  # fmt: skip
    log.info("world size changed: converting %s to DeepSpeed's universal format", checkpoint.name)
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise HpcftError(f"ds_to_universal failed on {checkpoint.name} (exit {done.returncode}):\n{tail}",
                         hint="resume with the world size that wrote it, or `hpcft export` it")  # fmt: skip
    shutil.rmtree(checkpoint / tag, ignore_errors=True)
    (staging / tag).rename(checkpoint / tag)
    shutil.rmtree(staging, ignore_errors=True)
    store.write_atomic(checkpoint / LATEST_UNIVERSAL, tag)
    log.info("converted %s: %s", checkpoint.name, tag)


def _wait_for_conversion(checkpoint: Path, poll_s: float) -> None:
    """Until rank 0 has published the conversion (or said why it could not)."""
    segment = lifecycle.segment(os.environ)
    while not (checkpoint / LATEST_UNIVERSAL).is_file():
        failed = (store.read_text(checkpoint / FAILED) or "").split(" ", 1)
        if failed[0] == segment:
            raise HpcftError(f"rank 0 could not convert {checkpoint.name}: {failed[1].strip()}")
        time.sleep(poll_s)


def patch_zero3_universal_load() -> None:
    """Fix (a) and (b) of the module docstring in DeepSpeed's ZeRO-3 universal load (idempotent)."""
    import os

    import torch
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    original = Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3
    if getattr(original, "hpcft_fixed", False):
        return

    def load(self, checkpoint_dir, *args, **kwargs):
        original(self, checkpoint_dir, *args, **kwargs)
        for state in self.optimizer.state.values():  # (a) a step counter of its own for every sub-group
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        saved = torch.load(os.path.join(checkpoint_dir, "zero", "optimizer_state.pt"), weights_only=False)
        groups = saved[OPTIMIZER_STATE_DICT]["param_groups"]
        if len(groups) == len(self.optimizer.param_groups):  # (b) each group's own hyper-parameters
            for group, own in zip(self.optimizer.param_groups, groups, strict=True):
                group.update({k: v for k, v in own.items() if k != "params"})

    load.hpcft_fixed = True
    Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3 = load
