"""Preemption and time limits: a warning → all ranks agree at a step boundary → save → exit for requeue.

The warning reaches the ranks as the file ``RUN/PREEMPT``: the batch script's USR1 trap (SLURM's
``--signal=B:USR1@LEAD``) or ``hpcft node`` on SLURM's SIGTERM (priority preemption with a grace
time) creates it on the shared filesystem. That reaches every rank whatever
started it — torchrun and the deepspeed launcher forward only INT/TERM/HUP/QUIT, and ranks started
over pdsh or mpirun are no descendants of any process SLURM signals. A USR1 sent to a rank directly
counts too. At each step end global rank 0 looks for the file (one metadata operation per step for
the whole job, not one per rank) and the ranks all-reduce their flags (MAX), so they stop at the same step;
then the Trainer saves, the callback records ``RUN/REQUEUE`` and the job asks SLURM to requeue it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from hpcft.rundir import store
from hpcft.rundir.layout import PREEMPT_FILE, REQUEUE_FILE

log = logging.getLogger("hpcft.train")
# Set by the srun launcher, whose ranks are the tasks SLURM signals: a SIGTERM (priority preemption,
# the time limit) then asks for a checkpoint like the warning. Under torchrun & co. it is not set:
# there ``hpcft node`` turns SLURM's SIGTERM into RUN/PREEMPT, and a SIGTERM from the launcher means
# "stop now" (another rank failed).
SIGTERM_ENV = "HPCFT_CHECKPOINT_ON_SIGTERM"


def make_preemption_callback(run: Path):
    """A TrainerCallback that stops and saves when the warning arrives; ``.preempted`` tells after."""
    from transformers import TrainerCallback

    flag_file = run / PREEMPT_FILE

    class PreemptionCallback(TrainerCallback):
        def __init__(self) -> None:
            self.signalled = False
            self.preempted = False
            signal.signal(signal.SIGUSR1, self._on_signal)
            if os.environ.get(SIGTERM_ENV) == "1":  # this rank is SLURM's task itself (srun launcher)
                signal.signal(signal.SIGTERM, self._on_signal)

        def _on_signal(self, signum, frame) -> None:
            self.signalled = True

        def on_step_end(self, args, state, control, **kwargs):
            # One process reads the shared filesystem per step (global rank 0); the all-reduce that
            # runs anyway carries its answer, and any rank's own signal, to every rank.
            if _agree(self.signalled or (state.is_world_process_zero and flag_file.exists())):
                self.preempted = True
                control.should_save = True
                control.should_training_stop = True
                if state.is_world_process_zero:
                    log.info("warning signal: saving at step %d and stopping for requeue", state.global_step)

    return PreemptionCallback()


def _agree(local: bool) -> bool:
    """True on every rank if it is true on any rank (one tiny all-reduce per step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return local
    flag = torch.tensor([1 if local else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def exit_if_saved_for_requeue(run: Path) -> None:
    """Exit 0 at once when this job already checkpointed for requeue (``RUN/REQUEUE``).

    A rank that dies after that save — gloo sometimes aborts a process at exit — makes torchrun restart
    every rank; they must not train on (the requeued job continues from the checkpoint).
    """
    if (run / REQUEUE_FILE).exists():
        print("hpcft: this job already checkpointed for requeue; not training again", flush=True)
        sys.exit(0)


def mark_requeue(run: Path, step: int) -> None:
    """Record that the job stopped on purpose after saving step ``step`` (read by ``hpcft after-job``)."""
    store.write_atomic(run / REQUEUE_FILE, f"{step}\n")
