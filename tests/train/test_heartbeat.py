"""A rank's own compute per step (hpcft.train.heartbeat.ComputeTimer) on a real 2-rank gloo DDP model.

Rank 1 sleeps 1 s inside its forward: its compute must show it, and rank 0's must not although its step
takes as long (it waits for rank 1 in the all-reduce) — what tells a slow node from the ranks waiting for it.
Rank 0 arrives 0.6 s late at each step (as it does with its per-step duties): rank 1 waits for it in DDP's
buffer broadcast, which is no compute of rank 1's. The gradients must be those of DDP's own all-reduce.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.train

SCRIPT = """\
import json, os, sys, time, torch, torch.distributed as dist
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
for step in range(5):
    timer.step_began()
    t0 = time.perf_counter()
    if rank == 0:
        time.sleep(0.6)
    ddp(torch.full((4, 8), float(rank + 1))).sum().backward()
    out.append((timer.seconds(), time.perf_counter() - t0))
grad = ddp.module.lin.weight.grad[0, 0].item()
print(json.dumps({"rank": rank, "steps": out, "grad": grad}))
"""


def test_compute_time_shows_the_slow_rank_only_and_gradients_stay_ddps(train_stack, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {r["rank"]: r for r in map(json.loads, [ln for ln in proc.stdout.splitlines() if ln.startswith("{")])}
    # DDP's forward syncs in the first two steps (the bucket rebuild at the second): from the third on it does not.
    for fast, slow in zip(ranks[0]["steps"][2:], ranks[1]["steps"][2:], strict=True):
        # Only rank 1's compute holds its sleep, and not its wait for rank 0 (margins for a loaded machine).
        assert 1.0 <= slow[0] < 1.5 and fast[0] < 0.5, (fast, slow)
        assert fast[1] >= 1.5 and slow[1] >= 1.5  # but each step took both sleeps, on both ranks
    # d(sum(x·w))/dw = sum over 4 rows of x = 4 (rank 0) and 8 (rank 1); 5 accumulated steps, averaged: 5 × 6
    assert ranks[0]["grad"] == ranks[1]["grad"] == pytest.approx(30.0)
