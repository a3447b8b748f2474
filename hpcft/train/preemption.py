"""Preemption and time limits: a warning → all ranks agree at a step boundary → save → exit for requeue.

The warning reaches the ranks as the file ``RUN/PREEMPT``: the batch script's USR1 trap (SLURM's
``--signal=B:USR1@LEAD``) or ``hpcft node`` on SLURM's SIGTERM (priority preemption with a grace
time) creates it on the shared filesystem. That reaches every rank whatever
started it — torchrun and the deepspeed launcher forward only INT/TERM/HUP/QUIT, and ranks started
over pdsh or mpirun are no descendants of any process SLURM signals. A USR1 sent to a rank directly
counts too. At each step end global rank 0 looks for the file (one metadata operation per step for
the whole job, not one per rank) and every rank starts a non-blocking all-reduce (MAX) of its flag,
whose result it reads at the next step end: the ranks stop at the same step, one step after the warning
(the cost: one more step before the save, seconds against SLURM's minutes of lead or grace time), and
no step waits for the collective or copies a device tensor to the host (``StepAgreement``). Then the
Trainer saves, the callback records ``RUN/REQUEUE`` and the job asks SLURM to requeue it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from hpcft.rundir import lifecycle
from hpcft.train import heartbeat

log = logging.getLogger("hpcft.train")
# Set by the srun launcher, whose ranks are the tasks SLURM signals: a SIGTERM (priority preemption,
# the time limit) then asks for a checkpoint like the warning. Under torchrun & co. it is not set:
# there ``hpcft node`` turns SLURM's SIGTERM into RUN/PREEMPT, and a SIGTERM from the launcher means
# "stop now" (another rank failed).
SIGTERM_ENV = "HPCFT_CHECKPOINT_ON_SIGTERM"


def asked(run: Path) -> bool:
    """Whether this segment's ranks were asked to checkpoint (``RUN/PREEMPT``, rundir/lifecycle.py)."""
    return lifecycle.checkpoint_asked(run, os.environ) is not None


def make_preemption_callback(run: Path):
    """A TrainerCallback that stops and saves when the warning arrives; ``.preempted`` tells after."""
    from transformers import TrainerCallback

    class PreemptionCallback(TrainerCallback):
        def __init__(self) -> None:
            self.signalled: str | bool = False
            self.preempted = False
            self.agreement = StepAgreement()
            signal.signal(signal.SIGUSR1, self._on_signal)
            if os.environ.get(SIGTERM_ENV) == "1":  # this rank is SLURM's task itself (srun launcher)
                signal.signal(signal.SIGTERM, self._on_signal)

        def _on_signal(self, signum, frame) -> None:
            self.signalled = signal.Signals(signum).name.removeprefix("SIG")  # "TERM" (SLURM's preemption)

        def on_step_end(self, args, state, control, **kwargs):
            # One process reads the shared filesystem per step (global rank 0); a non-blocking all-reduce
            # carries its answer, and any rank's own signal, to every rank by the next step end.
            if self.agreement.poll(bool(self.signalled) or (state.is_world_process_zero and asked(run))):
                self.preempted = True
                control.should_save = True
                control.should_training_stop = True
                if state.is_world_process_zero:
                    log.info("warning signal: saving at step %d and stopping for requeue", state.global_step)
                    if self.signalled and not asked(run):
                        # The signal came to the ranks themselves (srun launcher): after-job learns its cause
                        # here, as from hpcft node's request under the other launchers (SIGTERM: preemption).
                        cause = lifecycle.SIGTERM if self.signalled == "TERM" else self.signalled
                        lifecycle.ask_to_checkpoint(run, cause, os.environ)
                        log.info("SIG%s reached the ranks themselves (srun launcher)", self.signalled)

    return PreemptionCallback()


class StepAgreement:
    """Whether any rank raised its flag, known to every rank one ``poll`` later, without blocking a step.

    Each ``poll`` starts an all-reduce (MAX) of this rank's flag with ``async_op=True`` and returns the
    result of the previous one. On GPUs (NCCL) the result is copied into pinned host memory behind the
    collective on the same stream and a CUDA event marks it: reading it waits for that event, recorded a
    whole step earlier, never for the work queued since (``.item()`` would wait for the entire stream).
    Every rank polls once per step, so the collectives match across ranks.
    """

    def __init__(self) -> None:
        self.pending: tuple | None = None

    def poll(self, local: bool) -> bool:
        """Start the agreement on ``local``; True when the previous one found any rank's flag raised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return local
        previous = self._result()
        self.pending = self._start(local)
        return previous

    def _start(self, local: bool) -> tuple:
        import torch
        import torch.distributed as dist

        on_gpu = dist.get_backend() == "nccl"
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device="cuda" if on_gpu else "cpu")
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        if not on_gpu:
            return work, flag, None
        work.wait()  # NCCL: makes the current stream wait for the collective; the host goes on
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return None, host, done

    def _result(self) -> bool:
        if self.pending is None:
            return False
        work, value, done = self.pending
        self.pending = None
        if done is not None:
            done.synchronize()  # recorded a step ago: long complete
        else:
            began = time.perf_counter()
            work.wait()  # gloo: ran in its worker thread during the step, unless a peer is late
            heartbeat.waited(time.perf_counter() - began)  # a wait for the others, not this rank's own time
        return bool(value[0])


def exit_if_saved_for_requeue(run: Path) -> None:
    """Exit 0 at once when this job already checkpointed for requeue (``RUN/REQUEUE``).

    A rank that dies after that save — gloo sometimes aborts a process at exit — makes torchrun restart
    every rank; they must not train on (the requeued job continues from the checkpoint).
    """
    if lifecycle.saved_for_requeue(run, os.environ) is not None:
        print("hpcft: this job already checkpointed for requeue; not training again", flush=True)
        sys.exit(0)


def mark_requeue(run: Path, step: int) -> None:
    """Record that this job segment stopped on purpose after saving step ``step`` (read by ``hpcft after-job``)."""
    lifecycle.mark_saved_for_requeue(run, step, os.environ)
