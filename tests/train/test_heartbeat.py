"""A rank's own time per step (hpcft.train.heartbeat.ComputeTimer) on a real 2-rank gloo DDP model.

Rank 1 sleeps 1 s inside its forward and 0.3 s after its backward, rank 0 0.6 s before its forward, and a
barrier ends each step: every step takes 1.9 s on both ranks, of which rank 0 waits 1 s for rank 1 in the
all-reduce and 0.3 s in the barrier, and rank 1 waits 0.6 s for rank 0 in DDP's buffer broadcast. Each
rank's own time must hold its own sleeps and not its waits — what tells a slow node from the ranks waiting
for it. The gradients must be those of DDP's own all-reduce.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.train

SCRIPT = """\
import json, os, sys, time, torch, torch.distributed as dist
from hpcft.train.dist import exit_cleanly
from hpcft.train.heartbeat import ComputeTimer
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)
        self.register_buffer("shift", torch.zeros(1))  # DDP broadcasts it from rank 0 at every forward

    def forward(self, x):
        if rank == 1:
            time.sleep(1.0)
        return self.lin(x) + self.shift

ddp = torch.nn.parallel.DistributedDataParallel(Model())
timer = ComputeTimer()
assert timer.attach(ddp) and not ComputeTimer().attach(torch.nn.Linear(2, 2))
out = []
for step in range(6):
    timer.step_began()
    out.append(timer.seconds())  # the step before this one
    if rank == 0:
        time.sleep(0.6)
    ddp(torch.full((4, 8), float(rank + 1))).sum().backward()
    if rank == 1:
        time.sleep(0.3)  # after its step: rank 0 waits for it in the barrier below, a collective outside DDP
    dist.barrier()
grad = ddp.module.lin.weight.grad[0, 0].item()
print(json.dumps({"rank": rank, "steps": out, "grad": grad}), flush=True)
exit_cleanly(0)  # gloo's exit-time abort otherwise (hpcft/train/dist.py)
"""


def test_compute_time_shows_the_slow_rank_only_and_gradients_stay_ddps(train_stack, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {r["rank"]: r for r in map(json.loads, [ln for ln in proc.stdout.splitlines() if ln.startswith("{")])}
    # DDP's first two steps sync more (the bucket rebuild at the second): from the third on they do not.
    for fast, slow in zip(ranks[0]["steps"][3:], ranks[1]["steps"][3:], strict=True):
        assert 1.3 <= slow < 1.8 and 0.6 <= fast < 1.0, (fast, slow)  # margins for a loaded machine
    # d(sum(x·w))/dw = sum over 4 rows of x = 4 (rank 0) and 8 (rank 1); 6 accumulated steps, averaged: 6 × 6
    assert ranks[0]["grad"] == ranks[1]["grad"] == pytest.approx(36.0)
