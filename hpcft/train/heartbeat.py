"""Progress heartbeats: each rank publishes (step, phase, time) to its own node; the node's agent reads them.

One small file per rank in node-local shared memory (``/dev/shm``), written in place through ``mmap``:
a beat is a ``struct.pack`` and a slice assignment (about a microsecond), with no system call, no
collective, no host-device sync and nothing on the shared filesystem. A sequence number that is odd
while a beat is being written lets the reader (``hpcft node``'s watchdog) skip a torn read.

Layout: ``$HPCFT_HEARTBEAT_DIR/<node>/rank-<RANK>`` — the node's name in the path, so that nodes that
share one ``/dev/shm`` (containers, the lab's namespace nodes) never read each other's ranks. A rank started
over ssh (the head-node launchers) knows no SLURM name and uses the hostname; the watchdog reads both.
``<node>/agent.pid`` names the process that watches the node, for a rank whose environment cannot
(``allow_agent_to_trace``).

hpcft's trainer and every HF Trainer (through ``hf_integration``) beat through ``make_heartbeat_callback``;
a plain torch.distributed program adds one line per step: ``from hpcft.train.heartbeat import beat; beat(step)``.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "HPCFT_HEARTBEAT_DIR"
AGENT_ENV = "HPCFT_AGENT_PID"
AGENT_FILE = "agent.pid"  # in the node's folder: the watching process, for ranks started over ssh
# Phases a rank goes through; each but "train" has its own, longer, allowance (node/watchdog.py).
PHASES = ("startup", "first_step", "train", "save", "eval", "end")
_FORMAT = struct.Struct("<qqqdddq16s")  # seq, pid, step, time, s/step (EWMA), own seconds, own steps, phase
SIZE = _FORMAT.size


@dataclass(frozen=True)
class Beat:
    """A rank's last published progress."""

    rank: int
    pid: int
    step: int
    time: float
    step_seconds: float  # exponentially weighted mean of the last steps' durations; 0 until two steps
    phase: str
    own_total: float = 0.0  # the rank's own time over its measured steps, summed (``ComputeTimer``)
    own_steps: int = 0  # how many steps that sum holds (0: not measured: no DDP)


def node_dir(root: str | os.PathLike, node: str) -> Path:
    """Where the ranks of ``node`` publish, under the job's heartbeat root."""
    return Path(root) / node


class Publisher:
    """One rank's heartbeat file, written in place."""

    def __init__(self, path: Path, rank: int) -> None:
        self.rank, self.step, self.phase = rank, 0, "startup"
        self.seq, self.step_seconds, self._last_step_time = 0, 0.0, None
        self.own_total, self.own_steps = 0.0, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.publish()

    def publish(self, step: int | None = None, phase: str | None = None, compute: float | None = None) -> None:
        """Publish progress now: ``step`` (a new one updates the step time), ``phase`` (one of ``PHASES``),
        ``compute``: the rank's own seconds of the last whole step (``ComputeTimer``), added to a running sum
        that the node's agent averages over its own window."""
        now = time.time()
        if compute is not None:
            self.own_total, self.own_steps = self.own_total + compute, self.own_steps + 1
        if step is not None and step != self.step:
            if self._last_step_time is not None and phase in (None, "train") and self.phase == "train":
                took = (now - self._last_step_time) / max(1, step - self.step)
                self.step_seconds = _ewma(self.step_seconds, took)
            self.step, self._last_step_time = step, now
        if phase is not None:
            if phase != "train":
                self._last_step_time = None  # a save or an eval is not a step's duration
            elif self.phase != "train":
                self._last_step_time = now
            self.phase = phase
        self.seq += 1  # odd: being written
        self._map[:8] = struct.pack("<q", self.seq)
        self.seq += 1
        self._map[:] = _FORMAT.pack(self.seq, os.getpid(), self.step, now, self.step_seconds, self.own_total,
                                    self.own_steps, self.phase.encode())  # fmt: skip


def _ewma(mean: float, value: float) -> float:
    return value if not mean else 0.8 * mean + 0.2 * value


def read(path: Path, rank: int) -> Beat | None:
    """A rank's last beat, or None (no file yet, or being written twice in a row)."""
    for _ in range(3):
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) != SIZE:
            return None
        seq, pid, step, when, step_seconds, own_total, own_steps, phase = _FORMAT.unpack(data)
        if seq % 2 == 0:
            name = phase.rstrip(b"\0").decode(errors="replace")
            return Beat(rank, pid, step, when, step_seconds, name, own_total, own_steps)
        time.sleep(0.001)
    return None


def read_node(directory: Path) -> list[Beat]:
    """Every local rank's last beat, by rank."""
    beats = []
    for path in sorted(directory.glob("rank-*")):
        suffix = path.name.removeprefix("rank-")
        beat = read(path, int(suffix)) if suffix.isdigit() else None
        if beat is not None:
            beats.append(beat)
    return sorted(beats, key=lambda b: b.rank)


def allow_agent_to_trace(env: Mapping[str, str], folder: Path | None = None) -> None:
    """Let the node's agent (and the py-spy it starts) read this process's stacks under Yama ptrace_scope 1.

    With ``kernel.yama.ptrace_scope = 1`` (Ubuntu's default) only a process's ancestors may trace it, and
    py-spy, a child of the agent, is not one: ``prctl(PR_SET_PTRACER, agent)`` names the agent, whose
    descendants are then allowed (Documentation/admin-guide/LSM/Yama.rst). Harmless where Yama is absent.
    The agent is ``$HPCFT_AGENT_PID``, else the one ``folder/agent.pid`` names (ranks started over ssh, not
    by the agent, are not even its descendants).
    """
    agent = env.get(AGENT_ENV, "")
    if not agent.isdigit() and folder is not None:
        with contextlib.suppress(OSError):
            agent = (folder / AGENT_FILE).read_text().strip()
    if agent.isdigit():
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(0x59616D61, int(agent), 0, 0, 0)  # PR_SET_PTRACER


_publisher: Publisher | None = None


def publisher(env: Mapping[str, str] | None = None) -> Publisher | None:
    """This rank's publisher (created on first use), or None outside a job that watches its ranks."""
    global _publisher
    env = os.environ if env is None else env
    if _publisher is None and env.get(ENV):
        from hpcft.slurm.env import node_name, torch_rank_env

        rank = int({**env, **torch_rank_env(env)}.get("RANK", "0") or 0)
        folder = node_dir(env[ENV], node_name(env))
        _publisher = Publisher(folder / f"rank-{rank}", rank)
        allow_agent_to_trace(env, folder)
    return _publisher


def beat(step: int | None = None, phase: str | None = None, compute: float | None = None) -> None:
    """Publish this rank's progress (a no-op outside an hpcft job). Call once per step: ``beat(step)``."""
    pub = publisher()
    if pub is not None:
        pub.publish(step, phase if phase is not None else ("train" if step is not None else None), compute)


class ComputeTimer:
    """A rank's own time per step: the step's whole cycle less the time it waited for the other ranks.

    In a synchronous job every rank's step takes as long as the slowest one's, so only this tells a slow
    node from the ranks waiting for it. A DDP rank waits in two places: in DDP's forward, from its entry to
    the model's own forward (DDP broadcasts rank 0's buffers there, and rebuilds its buckets once), and at
    the end of the backward, from its last gradient bucket being ready to the all-reduces being done (a
    communication hook notes both, then all-reduces as DDP's default does), and in any other synchronous
    collective of ``torch.distributed`` (timed by wrappers). Whatever else a slow rank does slowly — data,
    forward, backward, optimizer, callbacks — stays in its own time. Under DeepSpeed or FSDP (no DDP) it
    stays unknown.
    """

    def __init__(self) -> None:
        self.cycle: float | None = None  # when this step began
        self.waited = 0.0
        self.entered: float | None = None
        self.ready: float | None = None
        self.done: float | None = None
        self.own: float | None = None  # the last whole step's own time

    def attach(self, wrapped) -> bool:
        """Register on a DistributedDataParallel model (before its first backward); False where it cannot."""
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(wrapped, DistributedDataParallel):
            return False
        try:
            wrapped.register_comm_hook(None, self._hook)
        except RuntimeError:  # a hook is already registered (the user's own)
            return False
        wrapped.register_forward_pre_hook(self._enter)
        wrapped.module.register_forward_pre_hook(self._forward)
        self._time_collectives()
        global _timer
        _timer = self
        return True

    # Synchronous collectives outside DDP — the Trainer's gather of the loss for its log, hpcft's barriers
    # around a commit — are waits for the slowest rank too. (DDP's own buffer broadcast runs in C++, timed above.)
    COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
                   "barrier", "gather", "scatter", "reduce")  # fmt: skip

    def _time_collectives(self) -> None:
        import torch.distributed as dist

        for name in self.COLLECTIVES:
            call = getattr(dist, name, None)
            if call is None or getattr(call, "_hpcft_timed", False):
                continue

            def timed(*args, _call=call, **kwargs):
                if kwargs.get("async_op"):
                    return _call(*args, **kwargs)
                began = time.perf_counter()
                try:
                    return _call(*args, **kwargs)
                finally:
                    self.waited += time.perf_counter() - began

            timed._hpcft_timed = True
            setattr(dist, name, timed)

    def _enter(self, module, args) -> None:
        self.entered = time.perf_counter()

    def _forward(self, module, args) -> None:
        if self.entered is not None:
            self.waited += time.perf_counter() - self.entered
            self.entered = None

    def _hook(self, process_group, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.ready = time.perf_counter()
        return allreduce_hook(process_group, bucket).then(self._done)

    def _done(self, fut):
        self.done = time.perf_counter()
        return fut.value()

    def step_began(self) -> None:
        """A step begins: the one before it is whole."""
        now = time.perf_counter()
        if self.ready is not None and self.done is not None:
            self.waited += max(0.0, self.done - self.ready)
        if self.cycle is not None:
            self.own = max(0.0, now - self.cycle - self.waited)
        self.cycle, self.waited, self.ready, self.done = now, 0.0, None, None

    def seconds(self) -> float | None:
        """The last whole step's own time, or None (not yet, or no DDP)."""
        return self.own


_timer: ComputeTimer | None = None  # the rank's timer once attached: ``waited`` adds to it


def waited(seconds: float) -> None:
    """Count ``seconds`` this rank spent waiting for the others outside the timed collectives (the wait of an
    asynchronous one, e.g. the preemption flag's agreement) as waiting, not as its own time."""
    if _timer is not None:
        _timer.waited += seconds


def make_heartbeat_callback(trainer=None):
    """A TrainerCallback beating at every step, and naming the long phases (first step, save, eval, end).

    With ``trainer`` (its DDP model is wrapped by the time training begins), each beat also carries the
    rank's own time per step (``ComputeTimer``), from which the node agents tell a slow node.
    """
    from transformers import TrainerCallback

    timer = ComputeTimer()

    class HeartbeatCallback(TrainerCallback):
        def on_init_end(self, args, state, control, **kwargs):
            beat(phase="startup")

        def on_train_begin(self, args, state, control, **kwargs):
            if trainer is not None and publisher() is not None:
                timer.attach(getattr(trainer, "model_wrapped", None))
            beat(state.global_step, "first_step")  # data, resume, the first step's compilation

        def on_step_begin(self, args, state, control, **kwargs):
            timer.step_began()

        def on_step_end(self, args, state, control, **kwargs):
            # Added last, it sees what the other callbacks decided; the Trainer evaluates, then saves.
            phase = "eval" if control.should_evaluate else "save" if control.should_save else "train"
            beat(state.global_step, phase, timer.seconds())

        def on_evaluate(self, args, state, control, **kwargs):
            beat(state.global_step, "save" if control.should_save else "train")

        def on_save(self, args, state, control, **kwargs):
            beat(state.global_step, "train")

        def on_train_end(self, args, state, control, **kwargs):
            beat(state.global_step, "end")  # the final save, export: no step allowance

    return HeartbeatCallback()
