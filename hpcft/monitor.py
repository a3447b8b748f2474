"""Status of runs: the scheduler's state joined with the progress the run directory shows.

SLURM is asked once per call for all jobs of all runs (``client.query_jobs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcft import runs
from hpcft.backends import SLURM_BACKENDS, local
from hpcft.slurm import client


@dataclass(frozen=True)
class RunStatus:
    """One row of ``hpcft status``."""

    run: str
    path: str
    backend: str
    state: str
    job_id: str
    job_ids: list[str]
    nodes: str
    elapsed: str
    step: int | None
    total_steps: int | None
    loss: float | None
    tokens_per_s: float | None
    checkpoint: str | None
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @property
    def ended(self) -> bool:
        """True once the run's newest job can no longer run."""
        return self.state in client.ENDED or self.state in ("LOST", "NOT_SUBMITTED")


def run_statuses(paths: Sequence[Path]) -> list[RunStatus]:
    """Status rows for ``paths``, asking SLURM once for all their jobs."""
    states = {p: runs.read_state(p) for p in paths}
    slurm_ids = [j["id"] for s in states.values() if s["backend"] in SLURM_BACKENDS for j in s["jobs"]]
    slurm = client.query_jobs(slurm_ids) if slurm_ids else {}
    return [_row(p, states[p], slurm) for p in paths]


def _row(path: Path, state: dict[str, Any], slurm: dict[str, client.JobState]) -> RunStatus:
    jobs = state["jobs"]
    job = jobs[-1] if jobs else None
    finished = (path / runs.FINISHED_FILE).exists()
    nodes = elapsed = ""
    if job is None:
        sched = "NOT_SUBMITTED"
    elif state["backend"] in SLURM_BACKENDS:
        js = slurm.get(job["id"])
        sched = js.state if js else "UNKNOWN"
        nodes, elapsed = (js.nodes, js.elapsed) if js else ("", "")
    else:
        sched = _local_state(job, state)
    metrics = runs.read_metrics(path)
    steps = [m for m in metrics if "step" in m and "loss" in m]
    start = next((m for m in reversed(metrics) if m.get("event") == "train_begin"), {})
    last = steps[-1] if steps else {}
    ckpt = runs.latest_checkpoint(path)
    return RunStatus(
        run=path.name,
        path=str(path),
        backend=state["backend"],
        state=sched,
        job_id=job["id"] if job else "",
        job_ids=[j["id"] for j in jobs],
        nodes=nodes,
        elapsed=elapsed,
        step=last.get("step"),
        total_steps=start.get("max_steps"),
        loss=last.get("loss"),
        tokens_per_s=last.get("tokens_per_s"),
        checkpoint=ckpt.name if ckpt else None,
        finished=finished,
    )


def _local_state(job: dict[str, Any], state: dict[str, Any]) -> str:
    if local.job_alive(job):
        return "RUNNING"
    if state.get("cancelled"):
        return "CANCELLED"
    if "rc" not in job:
        return "LOST"
    return "COMPLETED" if job["rc"] == 0 else "FAILED"


def wait_for(path: Path, on_poll: Callable[[RunStatus], None] | None = None, interval: float = 2.0) -> RunStatus:
    """Poll until the run's newest job has ended; return its final status."""
    while True:
        status = run_statuses([path])[0]
        if on_poll:
            on_poll(status)
        if status.ended:
            return status
        time.sleep(interval)
