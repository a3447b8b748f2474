"""The submission journal of a runs directory: a submission from a workstation happens once, whatever the network
does.

A remote ``hpcft submit`` carries an intent id chosen on the workstation (``hpcft.remote.submit``); the
cluster side records, in ``RUNS/.intents/ID.json``:

1. ``{"run": RUN_DIR}`` before the run directory is written and sbatch runs;
2. ``{"run": RUN_DIR, "job": JOB_ID}`` as soon as sbatch answered.

The whole submission holds an exclusive lock on ``ID.lock`` (``flock``: the kernel drops it when the process
dies, so a lock is never stale). A retry of the same id waits for that lock, then:

- finds the job → reports it (nothing is submitted again);
- finds a run directory but no job → asks SLURM for a job of that run (its ``--comment=hpcft:RUN``: sbatch
  answered but the record was not written) and records it, or, when SLURM has none, starts the job in that
  same run directory;
- finds nothing → submits as new.

What makes the first attempt finish even when its connection is gone: ``survive_hangup`` (SIGHUP ignored,
output to a closed connection dropped) around the submission.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcft.errors import HpcftError, RunError
from hpcft.rundir.store import write_atomic

INTENTS_DIR = ".intents"
ID_RE = re.compile(r"^[0-9a-f]{32}$")
LOCK_WAIT_S = 300  # a retry waits this long for the first attempt (it is running sbatch)
KEEP_DAYS = 30  # a workstation retries within minutes; older records are removed


@dataclass
class Intent:
    """One submission's record, open under its lock."""

    path: Path
    run: str | None = None
    job: str | None = None

    def begin(self, run_dir: str) -> None:
        """Record the run directory before it is written and sbatch runs."""
        self.run = run_dir
        self._write()

    def done(self, job_id: str) -> None:
        """Record the job sbatch answered with."""
        self.job = job_id
        self._write()

    def _write(self) -> None:
        write_atomic(self.path, json.dumps({"run": self.run, "job": self.job, "at": time.time()}) + "\n")


def check_id(intent_id: str) -> str:
    """An intent id is 32 hex digits (a uuid4's); anything else is refused before it names a file."""
    if not ID_RE.fullmatch(intent_id):
        raise HpcftError(f"--intent {intent_id!r}: expected 32 hexadecimal digits")
    return intent_id


@contextlib.contextmanager
def claim(runs_dir: Path, intent_id: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Intent]:
    """Hold the intent ``intent_id`` of ``runs_dir`` (waiting for an attempt still running) and give its record."""
    folder = runs_dir / INTENTS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{check_id(intent_id)}.lock", "a")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise RunError(f"cannot write the submission journal in {folder}: {e.strerror}") from None
    with lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunError(f"an earlier attempt of this submission still holds {lock.name}",
                                   hint="run the same command again in a minute") from None  # fmt: skip
                time.sleep(0.2)
        prune(folder, time.time())
        path = folder / f"{intent_id}.json"
        intent = Intent(path=path)
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(path.read_text())
            intent.run, intent.job = data.get("run"), data.get("job")
        yield intent


def prune(folder: Path, now: float, keep_days: float = KEEP_DAYS) -> None:
    """Remove the records (and locks) of intents older than ``keep_days``: nobody retries them any more."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > keep_days * 86400:
                    entry.unlink()


class _Quiet:
    """A stream whose writes to a closed connection are dropped instead of ending the process."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            return self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def survive_hangup() -> Iterator[None]:
    """Finish the block even if the ssh connection that started this process drops: SIGHUP is ignored and output
    that has nowhere to go is dropped (sbatch, once started, must be followed by its record)."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Quiet(sys.stdout), _Quiet(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
        signal.signal(signal.SIGHUP, old)
