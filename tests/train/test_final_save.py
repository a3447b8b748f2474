"""The final model is published like a checkpoint: a save cut short never ends as a FINISHED run with a broken model.

The event is real: every process of the job (runner, launcher, ranks) is killed with SIGKILL while rank 0 is
inside its final ``save_model``, after ``config.json`` and before the weights (held there by
``tests/train/slowsave``). ``hpcft resume`` must then end with a final model equal to the last checkpoint's
weights, read independently from that checkpoint's own ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import REPO, hpcft, wait_until

pytestmark = pytest.mark.train

SLOW_SAVE = REPO / "tests" / "train" / "slowsave"


def test_a_final_save_killed_half_way_is_redone_on_resume(demo_dir, runs_dir):
    env = {"PYTHONPATH": f"{SLOW_SAVE}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}
    hpcft("submit", str(demo_dir / "job.yaml"), "--backend", "local", "--runs-dir", str(runs_dir), "-o",
          "train.max_steps=10", "-o", "train.save_steps=10", "-o", "train.eval_steps=null", env=env)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    marker = run / ".in-final-save"
    wait_until("rank 0 inside its final save", marker.exists, timeout=300)
    saving = Path(marker.read_text().split()[1]).parent
    assert (saving / "config.json").is_file() and not (saving / "model.safetensors").exists()  # half-way
    (job,) = json.loads((run / "state.json").read_text())["jobs"]
    os.killpg(job["pid"], signal.SIGKILL)  # the runner leads the job's process group: every process dies
    wait_until("the job's processes to end", lambda: not _alive(job["pid"]), timeout=60)
    assert not (run / "FINISHED").exists()

    out = hpcft("resume", str(run), "--wait", timeout=600).stdout
    assert "COMPLETED" in out and (run / "FINISHED").read_text().strip() == "10"
    from safetensors.torch import load_file

    assert (run / "model" / "model.safetensors").is_file(), sorted(p.name for p in (run / "model").iterdir())
    final = load_file(run / "model" / "model.safetensors")
    saved = load_file(run / "checkpoints" / "checkpoint-10" / "model.safetensors")
    assert final.keys() == saved.keys() and all(bool((final[k] == saved[k]).all()) for k in saved)
    assert (run / "model" / "COMPLETE").is_file() and not (run / ".model.staging").exists()  # published


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True
