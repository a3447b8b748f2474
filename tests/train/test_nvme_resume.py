"""Resuming ZeRO-3 with NVMe offload is exact (hpcft.train.ds_nvme_resume works around DeepSpeed).

Without the patch DeepSpeed 0.19.8 restarts Adam on resume (measured: losses off by up to 0.51
within 10 steps); with it the resumed steps reproduce the uninterrupted run.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import hpcft
from tests.train.test_zero import losses, submit

pytestmark = pytest.mark.train


def test_zero3_nvme_resume_equals_the_uninterrupted_run(ds_ops, demo512, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    args = ["--zero", "3", "--offload", "nvme", "-o", f"train.offload.nvme_path={nvme}",
            "-o", "train.max_steps=12", "-o", "train.save_steps=6", "-o", "train.eval_steps=null"]  # fmt: skip
    full = submit(demo512 / "job.yaml", tmp_path, *args, name="full")
    # The same run interrupted after its step-6 checkpoint: keep that, drop what came after, resume.
    run = tmp_path / "resumed" / full.name
    shutil.copytree(full, run, symlinks=True)
    shutil.rmtree(run / "checkpoints" / "checkpoint-12")
    for name in ("FINISHED", "metrics.jsonl"):
        (run / name).unlink()
    spec = (run / "spec.yaml").read_text().replace(str(full.parent), str(run.parent))
    (run / "spec.yaml").write_text(spec)
    out = hpcft("resume", str(run), "--wait", timeout=900).stdout
    assert "from checkpoint-6" in out
    begin = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x)
    assert begin["start_step"] == 6
    assert losses(run) == losses(full)[6:]  # steps 7..12, bit for bit
