"""Reading a run's logs: the newest job's output, or one rank's log, optionally following.

Job output lives in ``RUN/logs/slurm-<job>.out`` (sbatch) or ``RUN/logs/local.out``; every rank
appends to ``RUN/logs/rank-<N>.log`` across requeues. Following switches to a newer job's
output when the run is requeued or resumed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from hpcft import runs


def log_file(run: Path, rank: int | None) -> Path:
    """The file to show: a rank's log, or the newest job's output."""
    logs = run / runs.LOGS_DIR
    if rank is not None:
        return logs / f"rank-{rank}.log"
    state = runs.read_state(run)
    if not state["jobs"] or state["backend"] == "local":
        return logs / "local.out"
    job = state["jobs"][-1]["id"]
    if state["backend"] == "submitit":
        return run / "submitit" / f"{job}_0_log.out"
    return logs / f"slurm-{job}.out"


def stream(run: Path, rank: int | None = None, follow: bool = False, interval: float = 0.5) -> Iterator[str]:
    """Yield the log's text; with ``follow``, keep yielding new text until the run has ended."""
    from hpcft import monitor

    path, offset = log_file(run, rank), 0
    while True:
        text, offset = _read_from(path, offset)
        if text:
            yield text
        if not follow:
            if offset == 0 and not text:
                yield f"(no output yet: {path})\n"
            return
        newer = log_file(run, rank)
        if newer != path:
            path, offset = newer, 0
            continue
        if not text and monitor.run_statuses([run])[0].ended:
            text, offset = _read_from(path, offset)
            if text:
                yield text
            return
        time.sleep(interval)


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)
