"""What the submitit backend runs on every node: the batch script's three steps, inside submitit's task.

With sbatch, hpcft's batch script records the job (begin-job), traps the warning signal, runs ``hpcft
node`` through srun and applies the requeue policy (after-job). submitit writes its own script, so
this callable does the same from inside each of submitit's tasks (one per node):

- the task with SLURM_PROCID 0 runs begin-job first and after-job when its launcher ends (a crash
  within ``run.max_failures`` is requeued with ``scontrol requeue``; submitit reruns this callable);
- priority preemption: SLURM sends SIGTERM to the tasks it launched — these processes, not their
  children — and submitit ignores it; here it is passed on to ``hpcft node``, which turns it into
  ``RUN/PREEMPT`` (the ranks save at their next step inside the grace time) as under sbatch;
- the time-limit warning is submitit's own ``--signal=USR2@LEAD``: submitit calls ``checkpoint`` on
  the task with global rank 0, which asks the ranks to save, waits for them, records the outcome and
  hands submitit the same callable to requeue (``submitit.helpers.Checkpointable``'s contract);
- ranks with no ``hpcft node`` beside them — a head-node launcher's (deepspeed-pdsh/openmpi/mvapich) other
  nodes, where it starts them over ssh and submitit's tasks end at once; the ``srun`` launcher's, each a task
  itself — are watched by ``hpcft node-watch``, which the first task starts on those nodes as a step of its
  own and ends after its launcher, as the batch script does (``watch_step``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.launchers.base import shape_of
from hpcft.node.after_job import after_job
from hpcft.node.agent import exit_status
from hpcft.node.begin_job import STOP, begin_job
from hpcft.rundir import lifecycle, store

if TYPE_CHECKING:
    from hpcft.spec import JobSpec


class NodeTask:
    """Picklable callable submitted by the submitit backend (see the module docstring)."""

    def __init__(self, python: str | None, run: str, head_only: bool, lead: int | None) -> None:
        self.python, self.run, self.head_only, self.lead = python, run, head_only, lead
        self.proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "proc": None}  # submitit pickles it again to requeue

    def __call__(self) -> int:
        run, env = Path(self.run), os.environ
        head = env.get("SLURM_PROCID", "0") == "0"
        if head:
            rc = begin_job(run, env)
            if rc == STOP:
                return 0
            if rc:
                raise RuntimeError(f"hpcft begin-job failed with {rc} (see the job output)")
        if lifecycle.finished_step(run) is not None or (self.head_only and env.get("SLURM_NODEID", "0") != "0"):
            return 0
        signal.signal(signal.SIGTERM, self._on_term)  # after submitit's own handlers, which bypass SIGTERM
        # hpcft's own warning, re-armed from each measured save, beside submitit's fixed USR2 (node/warn_timer.py)
        spec = store.load_run_spec(run)
        timer = self._start(["warn-timer"]) if head and spec.run.requeue else None
        argv = watch_step(self.python or sys.executable, run, spec, env) if head and spec.run.hang_timeout else []
        watch = subprocess.Popen(argv, stdin=subprocess.DEVNULL) if argv else None
        try:
            rc = self._launch()
        finally:
            if timer is not None:
                timer.terminate()
            if watch is not None:
                end_watch(watch)
        if not head:
            return rc
        code = after_job(run, rc).exit_code  # may requeue (scontrol requeue ends this job)
        if code:
            raise RuntimeError(f"hpcft: the run failed (exit {code}); see the job output and state.json")
        return 0

    def _start(self, command: list[str]) -> subprocess.Popen:
        argv = [self.python or sys.executable, "-m", "hpcft", *command, self.run]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def _launch(self) -> int:
        self.proc = self._start(["node"])
        return exit_status(self.proc.wait())

    def _on_term(self, signum, frame) -> None:
        # Passed on to `hpcft node`, which does what it does with SLURM's SIGTERM under sbatch: the first
        # becomes RUN/PREEMPT, a second reaches the launcher (the srun launcher's rank checkpoints itself).
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
        else:
            lifecycle.ask_to_checkpoint(Path(self.run), lifecycle.SIGTERM, os.environ)  # not launched: stop at step 1

    def checkpoint(self):
        """submitit's time-limit hook (global rank 0): the ranks save, then submitit requeues the job.

        When the policy says not to requeue (FINISHED, run.requeue off, run.max_preemptions spent) the
        task exits with the decision's code: returning None would make submitit fail the job.
        """
        import submitit

        run = Path(self.run)
        print("hpcft: time-limit warning (submitit USR2): asking the ranks to checkpoint", flush=True)
        lifecycle.ask_to_checkpoint(run, lifecycle.USR2, os.environ)
        rc = 0
        if self.proc is not None:
            rc = wait_child(self.proc, max((self.lead or 90) - 10, 10))
            if rc is None:
                rc = 124  # no checkpoint in time: the requeued run continues from the newest complete one
        decision = after_job(run, rc, requeue_job=False)  # records the outcome; submitit requeues itself
        if decision.action != "requeue":
            sys.exit(decision.exit_code)
        return submitit.helpers.DelayedSubmission(NodeTask(self.python, self.run, self.head_only, self.lead))


def watch_step(python: str, run: Path, spec: JobSpec, env: Mapping[str, str]) -> list[str]:
    """The srun line of ``hpcft node-watch`` on the nodes whose ranks have no ``hpcft node`` beside them (one task
    and one CPU each, ``--overlap``: beside the ranks), as in the batch scripts: a head-node launcher's other
    nodes, every node of the ``srun`` launcher; [] where there are none."""
    shape, nodes = shape_of(spec.launch.launcher), int(env.get("SLURM_JOB_NUM_NODES") or 1)
    where = {"head_node": [f"--nodes={nodes - 1}", f"--ntasks={nodes - 1}", f"--exclude={env['SLURMD_NODENAME']}"],
             "per_rank": [f"--nodes={nodes}", f"--ntasks={nodes}"]}.get(shape)  # fmt: skip
    if not where or (shape == "head_node" and nodes < 2):
        return []
    return ["srun", "--overlap", "--job-name=hpcft-watch", *where, "--ntasks-per-node=1", "--cpus-per-task=1",
            python, "-m", "hpcft", "node-watch", str(run)]  # fmt: skip


def end_watch(watch: subprocess.Popen, timeout_s: float = 15) -> None:
    """End the watch step after the launcher: SIGUSR1, which srun passes on to its tasks (a SIGTERM to srun
    would kill them uncleanly), then SIGKILL if it is still there after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        watch.send_signal(signal.SIGUSR1)
    if wait_child(watch, timeout_s) is None:
        with contextlib.suppress(ProcessLookupError):
            watch.kill()
        wait_child(watch, 5)


def wait_child(proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.2) -> int | None:
    """``proc``'s exit status once it ends within ``timeout_s``, else None; safe inside a signal handler.

    submitit calls ``checkpoint`` from its signal handler, which interrupts ``_launch``'s ``proc.wait()``
    while that holds the Popen's internal lock: ``proc.wait(timeout=…)`` there can never take the lock and
    times out however early the child ended. ``os.waitpid`` needs no lock.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (by the interrupted wait)
            return None if proc.returncode is None else exit_status(proc.returncode)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return exit_status(proc.returncode)
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
