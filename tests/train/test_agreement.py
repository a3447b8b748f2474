"""The preemption agreement (hpcft.train.preemption.StepAgreement) on a real 2-rank gloo group.

Rank 1 alone raises its flag at step 3, interleaved with the collectives a training step runs anyway
(an all-reduce per step, as DDP's gradients): every rank must learn it at step 4 — one step later —
and no rank before.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.train

SCRIPT = """\
import json, os, sys, torch, torch.distributed as dist
from hpcft.train.preemption import StepAgreement
dist.init_process_group("gloo")
agreement, seen = StepAgreement(), []
for step in range(1, 7):
    grads = torch.ones(1 << 16)
    dist.all_reduce(grads)  # the step's own collective, between two polls
    seen.append(agreement.poll(dist.get_rank() == 1 and step == 3))
with open(os.path.join(sys.argv[1], f"rank-{dist.get_rank()}.json"), "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
"""


def test_every_rank_learns_one_ranks_flag_one_step_later(train_stack, tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = [False, False, False, True, False, False]  # raised at step 3, known at step 4 on both ranks
    assert [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)] == [expected, expected]
