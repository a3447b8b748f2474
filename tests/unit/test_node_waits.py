"""The node side's waits end when what they wait for has happened, not at their limit."""

from __future__ import annotations

import signal
import subprocess
import time

from hpcft.node import after_job
from hpcft.node.submitit_task import wait_child
from hpcft.slurm.client import StepState


def _in_handler_of_interrupted_wait(wait) -> tuple[object, float]:
    """Run ``wait(proc)`` in a signal handler that interrupts ``proc.wait()``, as submitit's USR2 handler
    interrupts ``NodeTask._launch``; (what it returned, seconds from the signal to its return)."""
    proc = subprocess.Popen(["sleep", "0.5"])
    seen: dict = {}

    def handler(signum, frame) -> None:
        t0 = time.monotonic()
        seen["rc"] = wait(proc)
        seen["s"] = time.monotonic() - t0

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        proc.wait()
    finally:
        signal.signal(signal.SIGALRM, old)
    return seen["rc"], seen["s"]


def test_popen_wait_in_a_handler_that_interrupted_wait_cannot_see_the_exit():
    # The upstream behaviour wait_child works around: Popen's lock is held by the interrupted wait().
    def popen_wait(proc):
        try:
            return proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "timeout"

    rc, seconds = _in_handler_of_interrupted_wait(popen_wait)
    assert rc == "timeout" and seconds >= 2


def test_wait_child_in_that_handler_returns_when_the_child_ends():
    rc, seconds = _in_handler_of_interrupted_wait(lambda proc: wait_child(proc, 10, poll_s=0.05))
    assert rc == 0 and seconds < 2


def test_wait_child_gives_up_at_its_limit():
    proc = subprocess.Popen(["sleep", "5"])
    try:
        assert wait_child(proc, 0.3, poll_s=0.05) is None
    finally:
        proc.kill()
        proc.wait()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _steps(*states: str) -> list[StepState]:
    return [StepState(f"7.{i}", state, "0", "node[1-2]") for i, state in enumerate(states)]


def test_out_of_memory_does_not_wait_for_a_step_a_head_node_launcher_never_has(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(after_job, "time", clock)
    monkeypatch.setattr(after_job.client, "query_steps", lambda job: [StepState("7.batch", "RUNNING", "0", "node1")])
    assert after_job.out_of_memory("7", {}) is None
    assert clock.now <= after_job.NO_STEP_S + 1  # was the whole 15 s


def test_out_of_memory_waits_for_a_running_step_to_be_recorded_ended(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(after_job, "time", clock)
    answers = iter([_steps("RUNNING")] * 6 + [_steps("OUT_OF_MEMORY")])
    monkeypatch.setattr(after_job.client, "query_steps", lambda job: next(answers))
    assert "out of memory: step 7.0 on node[1-2]" in after_job.out_of_memory("7", {})
    assert clock.now == 6
