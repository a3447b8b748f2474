"""The local backend: this machine, no SLURM (``torchrun --standalone``).

``start`` runs a detached runner (``python -m hpcft.backends.local RUN``) in its own session,
which runs ``hpcft node RUN`` and records the exit code in state.json; the job id is
``local-<pid>``. ``cancel`` signals the runner's process group (runner, launcher and ranks).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.backends.base import Prepared
from hpcft.errors import RunError
from hpcft.rundir import store
from hpcft.rundir.layout import LOGS_DIR
from hpcft.slurm.env import ClusterEnv

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan
    from hpcft.spec import JobSpec


def prepare(spec: JobSpec, run: str, node_argv: tuple[str, ...], signal_lead: int | None) -> Prepared:
    """No extra files; the "submit" command is ``hpcft node RUN`` on this machine."""
    return Prepared({}, tuple(node_argv), ClusterEnv.local({}))


def start(plan: Plan, run: Path) -> str:
    """Start the runner in the background, in its own session; return ``local-<pid>``."""
    log = open(run / LOGS_DIR / "local.out", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [plan.spec.launch.python or sys.executable, "-m", "hpcft.backends.local", str(run)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=run,
    )
    log.close()
    job_id = f"local-{proc.pid}"
    store.record_job(run, job_id, pid=proc.pid, host=socket.gethostname())
    return job_id


def cancel(job: dict) -> None:
    """Stop a local job's whole process group, once it is sure the group is still this job's runner.

    The pid comes from state.json: the process may have ended and its number been reused, or the file
    may be damaged. Only a live process on this host that leads its own session and runs this module
    is signalled.
    """
    if not job_alive(job):
        raise RunError(f"local job {job.get('id')} is not running on this host", hint="`hpcft status` shows its state")
    pid = job["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


def job_alive(job: dict) -> bool:
    """True while the runner of a local job runs on this host: its pid leads a session running this module."""
    pid = job.get("pid")
    if job.get("host") != socket.gethostname() or "rc" in job or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if pid <= 1:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[-1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    # stat fields after the name: state ppid pgrp session ...; the runner was started with start_new_session.
    state, session = fields[0], int(fields[3])
    return state != "Z" and session == pid and b"hpcft.backends.local" in argv


def _run(run: Path) -> int:
    proc = subprocess.run([sys.executable, "-m", "hpcft", "node", str(run)], stdin=subprocess.DEVNULL)
    pid = os.getpid()
    store.record_job(run, f"local-{pid}", pid=pid, host=socket.gethostname(), rc=proc.returncode, ended=store.now_iso())
    return proc.returncode


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
