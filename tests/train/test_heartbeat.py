"""A rank's own time per step (hpcft.train.heartbeat.ComputeTimer) on a real 2-rank gloo DDP model.

Rank 1 sleeps 1 s inside its forward and 0.3 s after its backward, rank 0 0.6 s before its forward, and a
barrier ends each step: every step takes 1.9 s on both ranks, of which rank 0 waits 1 s for rank 1 in the
all-reduce and 0.3 s in the barrier, and rank 1 waits 0.6 s for rank 0 in DDP's buffer broadcast. Each
rank's own time must hold its own sleeps and not its waits — what tells a slow node from the ranks waiting
for it. The gradients must be those of DDP's own all-reduce. And the phases a real Trainer's rank publishes
while its long first step, evals and saves last (what the watchdog's allowances go by).
"""

from __future__ import annotations

import json
import os
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
with open(f"rank{rank}.json", "w") as f:  # a file each: both ranks print at once, into one pipe
    json.dump({"rank": rank, "steps": out, "grad": grad}, f)
exit_cleanly(0)  # gloo's exit-time abort otherwise (hpcft/train/dist.py)
"""


def test_compute_time_shows_the_slow_rank_only_and_gradients_stay_ddps(train_stack, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    # DDP's first two steps sync more (the bucket rebuild at the second): from the third on they do not.
    for fast, slow in zip(ranks[0]["steps"][3:], ranks[1]["steps"][3:], strict=True):
        assert 1.3 <= slow < 1.8 and 0.6 <= fast < 1.0, (fast, slow)  # margins for a loaded machine
    # d(sum(x·w))/dw = sum over 4 rows of x = 4 (rank 0) and 8 (rank 1); 6 accumulated steps, averaged: 6 × 6
    assert ranks[0]["grad"] == ranks[1]["grad"] == pytest.approx(36.0)


PHASES = """\
import json, socket, sys, torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from hpcft.train import heartbeat

folder = heartbeat.node_dir(sys.argv[1], socket.gethostname())  # no SLURM name here: the hostname's
seen = []

def published():
    (beat,) = heartbeat.read_node(folder)
    return beat.phase

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), labels)}

class Look(TrainerCallback):  # added before hpcft's: sees what it published for the phase now running
    def on_step_begin(self, args, state, control, **kwargs):
        seen.append([f"step {state.global_step + 1}", published()])

    def on_evaluate(self, args, state, control, **kwargs):
        seen.append(["eval", published()])

    def on_save(self, args, state, control, **kwargs):
        seen.append(["save", published()])

data = [{"x": torch.randn(4), "labels": torch.randn(())} for _ in range(16)]
args = TrainingArguments(sys.argv[2], max_steps=4, per_device_train_batch_size=4, save_steps=2,
                         eval_strategy="steps", eval_steps=3, report_to=[], use_cpu=True)
trainer = Trainer(Tiny(), args, train_dataset=data, eval_dataset=data[:4])
trainer.add_callback(Look())
trainer.add_callback(heartbeat.make_heartbeat_callback(trainer))  # last, as hpcft adds it
trainer.train()
seen.append(["after train()", published()])
print(json.dumps(seen), flush=True)
"""


def test_the_trainer_publishes_each_long_phase_while_it_lasts(train_stack, tmp_path):
    """What keeps a healthy run's long first step, eval and save from being taken for a hang: while each lasts,
    the rank's published phase is the one the watchdog allows for (run.hang_phase_timeout, or 3 × the last
    save), not "train" with its step-time allowance. A real HF Trainer, hpcft's callback added last."""
    from hpcft.node import watchdog
    from hpcft.train import heartbeat

    env = {k: v for k, v in os.environ.items() if k != "SLURMD_NODENAME"}
    proc = subprocess.run([sys.executable, "-c", PHASES, str(tmp_path / "hb"), str(tmp_path / "out")],
                          env={**env, heartbeat.ENV: str(tmp_path / "hb"), "RANK": "0"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]
    # the last step evaluates and saves: "eval" while evaluating, then "save" until the save is done
    assert seen == [("step 1", "first_step"), ("step 2", "train"), ("save", "save"), ("step 3", "train"),
                    ("eval", "eval"), ("step 4", "train"), ("eval", "eval"), ("save", "save"),
                    ("after train()", "end")], seen  # fmt: skip
    rules = watchdog.Rules(timeout=90, step_factor=20, phase_timeout=1800, save_seconds=120)  # the defaults
    allowed = {p: watchdog.allowance(heartbeat.Beat(0, 1, 3, 0.0, 0.05, p), rules) for _, p in seen}
    assert allowed == {"first_step": 1800, "train": 90, "eval": 1800, "save": 1800, "end": 1800}  # 3 min pass
