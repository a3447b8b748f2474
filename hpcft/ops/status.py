"""Status of runs: the scheduler's state joined with the progress the run directory shows.

Decides what ``hpcft status`` reports for a run: its state (squeue while live, sacct once ended),
its jobs across requeues and resumes, progress, loss, throughput, ETA, newest complete checkpoint
and restart count. SLURM is asked once per call for all jobs of all runs (``client.query_jobs``);
callers that refresh must sleep between calls. The Rich table is built here; only the CLI prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcft.backends import local
from hpcft.backends.base import uses_slurm
from hpcft.errors import HpcftError, RunError, UnreadableError
from hpcft.rundir import health, layout, lifecycle, store
from hpcft.slurm import client
from hpcft.spec import trackers

ETA_WINDOW = 20  # step records used for the current speed


@dataclass(frozen=True)
class RunStatus:
    """One row of ``hpcft status`` (``to_dict`` is its ``--json`` form)."""

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
    nodelist: str = ""
    reason: str = ""
    eval_loss: float | None = None
    eta_s: float | None = None
    restarts: int = 0
    trackers: list[str] = field(default_factory=list)  # where the curves are (train.report_to)
    sweep: str = ""  # the sweep (job array) this run is a point of
    sweep_values: dict[str, str] = field(default_factory=dict)
    startup: dict[str, Any] = field(default_factory=dict)  # rank 0's start-up profile of the newest (re)start
    hang: dict[str, Any] = field(default_factory=dict)  # the newest hang: step, since, suspects, stacks
    straggler: dict[str, Any] = field(default_factory=dict)  # the newest slow node named: node, ratio, since_step
    node_speeds: dict[str, Any] = field(default_factory=dict)  # running: node → step, step and compute seconds
    lemons: str = ""  # what the newest job's submission did with the runs directory's lemon nodes
    ettr: float | None = None  # the goodput at the newest job end (state.json, after-job): training ÷ time held

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @property
    def ended(self) -> bool:
        """True once the run's newest job can no longer run."""
        return self.state in client.ENDED or self.state in ("LOST", "NOT_SUBMITTED", "DAMAGED", "UNREADABLE")


def squeue_runs(prefix: str) -> list[Path]:
    """Run directories of this user's jobs in squeue (their ``--comment``), wherever their runs directory is."""
    found = {Path(run) for run in client.user_jobs(prefix).values()}
    return sorted(p for p in found if (p / layout.STATE_FILE).is_file())


def run_statuses(paths: Sequence[Path]) -> list[RunStatus]:
    """Status rows for ``paths``, asking SLURM once for all their jobs.

    A run whose files cannot be read (damaged, or being written by a ``submit`` right now) gets a
    ``DAMAGED`` row saying why, one this user may not read (another user's, in a shared runs directory)
    an ``UNREADABLE`` row: one such run never hides the others.
    """
    states: dict[Path, dict[str, Any] | HpcftError] = {}
    for p in paths:
        try:
            states[p] = store.read_state(p)
        except HpcftError as e:
            states[p] = e
    slurm_ids = [j["id"] for s in states.values() if isinstance(s, dict) and uses_slurm(s["backend"])
                 for j in (s["jobs"] or [store.newest_job(s)]) if j]  # fmt: skip
    slurm = client.query_jobs(slurm_ids) if slurm_ids else {}
    rows = []
    for p, state in states.items():
        try:
            rows.append(damaged_row(p, state) if isinstance(state, HpcftError) else _row(p, state, slurm))
        except HpcftError as e:  # a file _row reads (metrics, spec) is damaged
            rows.append(damaged_row(p, e))
        except OSError as e:  # a directory _row looks into (checkpoints, logs) cannot be listed
            rows.append(damaged_row(p, _read_error(e)))
    return rows


def _read_error(e: OSError) -> RunError:
    where = e.filename or "a file of the run"
    if isinstance(e, PermissionError):
        return UnreadableError(f"permission denied: {where}", hint=store.PERMISSION_HINT)
    return RunError(f"cannot read {where}: {e.strerror}")


def damaged_row(path: Path, error: HpcftError) -> RunStatus:
    """The row of a run that cannot be read: the reason names the file (relative to the run) and what is wrong.

    Its state is ``UNREADABLE`` when this user may not read the file, ``DAMAGED`` otherwise.
    """
    reason = error.message.replace(f"{path}/", "").replace(str(path), "the run directory")
    state = "UNREADABLE" if isinstance(error, UnreadableError) else "DAMAGED"
    return RunStatus(run=path.name, path=str(path), backend="?", state=state, job_id="", job_ids=[], nodes="",
                     elapsed="", step=None, total_steps=None, loss=None, tokens_per_s=None, checkpoint=None,
                     finished=False, reason=reason)  # fmt: skip


def row_error(row: RunStatus) -> RunError | None:
    """The error ``hpcft status RUN`` gives for its one run when it cannot show it (damaged, unreadable), or None."""
    if row.state == "UNREADABLE":
        return UnreadableError(f"{row.run}: {row.reason}", hint=store.PERMISSION_HINT)
    if row.state == "DAMAGED":
        return RunError(row.reason, hint=store.DAMAGED_HINT)
    return None


def _row(path: Path, state: dict[str, Any], slurm: dict[str, client.JobState]) -> RunStatus:
    jobs = state["jobs"]
    job = store.newest_job(state)
    sched, nodes, elapsed, where = _scheduler_view(job, state, slurm)
    oom = _oom(state, job)
    metrics = store.read_progress(path)  # events + the log's tail: a refresh costs the same at any length
    progress = summarize_metrics(metrics)
    train = store.raw_train_spec(path)
    ckpt = _checkpoint(path, train)
    running = sched == "RUNNING"
    return RunStatus(
        run=path.name,
        path=str(path),
        backend=state["backend"],
        state="OUT_OF_MEMORY" if oom and sched in client.ENDED else sched,
        job_id=job["id"] if job else "",
        job_ids=[j["id"] for j in jobs] or ([job["id"]] if job else []),
        nodes=nodes,
        elapsed=elapsed,
        step=progress["step"],
        total_steps=progress["total_steps"],
        loss=progress["loss"],
        tokens_per_s=progress["tokens_per_s"],
        checkpoint=ckpt,
        finished=lifecycle.finished_step(path) is not None,
        nodelist=where if running or sched in client.ENDED else "",
        reason=where if sched == "PENDING" else (oom or ""),
        eval_loss=progress["eval_loss"],
        eta_s=estimate_eta(metrics, progress["total_steps"]) if running else None,
        restarts=count_restarts(state, metrics),
        trackers=_trackers(path, train),
        sweep=state.get("sweep") if isinstance(state.get("sweep"), str) else "",
        sweep_values=state.get("sweep_values") if isinstance(state.get("sweep_values"), dict) else {},
        startup=progress["startup"],
        hang=health.newest_event(state, "hang") or {},
        straggler=health.newest_event(state, "straggler") or {},
        node_speeds=health.read_node_speeds(path) if running else {},
        lemons=str(job.get("lemons", "")) if job else "",
        ettr=_number(state.get("goodput", {}).get("ettr")),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def startup_line(profile: dict[str, Any]) -> str | None:
    """``start-up (warm rank 0, seconds from its process start): imports 0.4, …`` of a profile, or None."""
    meta = ("warm", "parent", "process_start")
    stages = [(k, v) for k, v in profile.items() if k not in meta and isinstance(v, int | float)]
    if not stages:
        return None
    steps = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in stages)
    return f"start-up ({'warm' if profile.get('warm') else 'cold'} rank 0, seconds from its process start): {steps}"


def health_lines(row: RunStatus) -> list[str]:
    """What the node watchdogs saw: each node's speed while running, the newest slow node and hang; pure."""
    lines = []
    if row.node_speeds:
        speeds = ", ".join(f"{n} {v.get('compute_seconds') or '?'} s compute / {v.get('step_seconds') or '?'} s step"
                           for n, v in sorted(row.node_speeds.items()))  # fmt: skip
        lines.append(f"node speeds (per step): {speeds}")
    if row.straggler:
        lines.append(f"straggler: {row.straggler.get('reason')}")
    if row.lemons:
        lines.append(f"at submission: {row.lemons}")
    if row.hang:
        lines.append(f"last hang: {health.describe(row.hang)}")
    return lines


def _trackers(path: Path, train: dict[str, Any]) -> list[str]:
    names = train.get("report_to")
    uri = train.get("mlflow_uri")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return []
    return trackers.tracker_links(names, path, mlflow_uri=uri if isinstance(uri, str) else None)


def _scheduler_view(
    job: dict[str, Any] | None, state: dict[str, Any], slurm: dict[str, client.JobState]
) -> tuple[str, str, str, str]:
    """(state, node count, elapsed, nodelist-or-reason) of the newest job."""
    if job is None:
        return "NOT_SUBMITTED", "", "", ""
    if not uses_slurm(state["backend"]):
        return _local_state(job, state), "1", "", job.get("host", "")
    js = slurm.get(job["id"])
    if js is None:
        return "UNKNOWN", "", "", ""
    return js.state, js.nodes, js.elapsed, js.reason_or_nodelist


def _oom(state: dict[str, Any], job: dict[str, Any] | None) -> str | None:
    """What ran out of memory in the newest job, as after-job recorded it."""
    events = [e for e in state.get("events", []) if job and e.get("job") == job["id"] and e.get("oom")]
    return events[-1]["oom"] if events else None


def _checkpoint(path: Path, train: dict[str, Any]) -> str | None:
    """Name of the newest complete checkpoint (in ``train.output`` when the spec sets one)."""
    ckpt = store.latest_checkpoint(path, store.run_output(train))
    return ckpt.name if ckpt else None


def _local_state(job: dict[str, Any], state: dict[str, Any]) -> str:
    if local.job_alive(job):
        return "RUNNING"
    if state.get("cancelled"):
        return "CANCELLED"
    if "rc" not in job:
        return "LOST"
    return "COMPLETED" if job["rc"] == 0 else "FAILED"


def summarize_metrics(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Newest step, total steps, loss, eval loss and tokens/s from ``metrics.jsonl`` records."""
    steps = [m for m in metrics if "step" in m and "loss" in m]
    evals = [m.get("eval_loss", m.get("last_eval_loss")) for m in metrics if {"eval_loss", "last_eval_loss"} & m.keys()]
    begin = next((m for m in reversed(metrics) if m.get("event") == "train_begin"), {})
    last = steps[-1] if steps else {}
    return {
        "step": last.get("step"),
        "total_steps": begin.get("max_steps"),
        "loss": last.get("loss"),
        "tokens_per_s": last.get("tokens_per_s"),
        "eval_loss": evals[-1] if evals else None,
        "startup": begin.get("startup") if isinstance(begin.get("startup"), dict) else {},
    }


def estimate_eta(metrics: Sequence[dict[str, Any]], total_steps: int | None) -> float | None:
    """Seconds left at the speed of the newest ``ETA_WINDOW`` steps since the last (re)start."""
    if not total_steps:
        return None
    start = max((i for i, m in enumerate(metrics) if m.get("event") == "train_begin"), default=-1)
    steps = [m for m in metrics[start + 1 :] if "step" in m and "loss" in m and "time" in m][-ETA_WINDOW:]
    if len(steps) < 2:
        return None
    first, last = steps[0], steps[-1]
    done, seconds = last["step"] - first["step"], last["time"] - first["time"]
    if done <= 0 or seconds <= 0:
        return None
    return max(total_steps - last["step"], 0) * seconds / done


def count_restarts(state: dict[str, Any], metrics: Sequence[dict[str, Any]]) -> int:
    """How often the run started again: later jobs (resumes), requeues of each job, in-job restarts.

    Requeues are counted from the ``restart`` field (SLURM_RESTART_COUNT) of the ``train_begin``
    records of each job, and from state.json's ``restarts`` counter (requeues not yet training);
    in-job restarts from state.json's events.
    """
    in_job = sum(1 for e in state.get("events", []) if e.get("kind") == "in-job restart")
    later_jobs = max(len(state.get("jobs", [])) - 1, 0)
    per_job: dict[str, int] = {}
    for m in metrics:
        if m.get("event") == "train_begin":
            job = str(m.get("job_id", ""))
            per_job[job] = max(per_job.get(job, 0), int(m.get("restart") or 0))
    return in_job + max(later_jobs + sum(per_job.values()), later_jobs + int(state.get("restarts") or 0))


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


STATE_STYLES = {"RUNNING": "green", "COMPLETED": "bold green", "PENDING": "yellow", "REQUEUED": "yellow"}


def status_table(rows: Sequence[RunStatus]):
    """A Rich table of ``rows`` (the caller prints it; Rich is imported here, not at module load)."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(
        "run",
        "state",
        "jobs",
        "nodes",
        "elapsed",
        "progress",
        "step",
        "loss",
        "tok/s",
        "ETA",
        "checkpoint",
        "restarts",
        "ETTR",
        header_style="bold",
    )
    for r in rows:
        style = STATE_STYLES.get(r.state, "red" if r.state in client.ENDED or r.state == "LOST" else "")
        state = Text(r.state + (f" ({r.reason})" if r.reason else ""), style=style)
        bar = ProgressBar(total=r.total_steps or 1, completed=r.step or 0, width=16) if r.total_steps else "-"
        nodes = f"{r.nodes} {r.nodelist}".strip() if r.nodelist else r.nodes
        table.add_row(
            r.run,
            state,
            ",".join(r.job_ids) or "-",
            nodes or "-",
            r.elapsed or "-",
            bar,
            f"{r.step if r.step is not None else '-'}/{r.total_steps or '?'}",
            f"{r.loss:.4f}" if r.loss is not None else "-",
            f"{r.tokens_per_s:,.0f}" if r.tokens_per_s is not None else "-",
            format_duration(r.eta_s),
            r.checkpoint or "-",
            str(r.restarts),
            f"{r.ettr:.2f}" if r.ettr is not None else "-",
        )
    return table


def sweep_summaries(rows: Sequence[RunStatus]) -> list[str]:
    """One line per sweep among ``rows``: how many points ended, and the best point by eval loss."""
    lines = []
    for name in sorted({r.sweep for r in rows if r.sweep}):
        points = [r for r in rows if r.sweep == name]
        done = sum(r.ended for r in points)
        scored = [r for r in points if r.eval_loss is not None]
        best = min(scored, key=lambda r: r.eval_loss) if scored else None
        line = f"sweep {name}: {len(points)} points, {done} ended"
        ettrs = [r.ettr for r in points if r.ettr is not None]
        if ettrs:
            line += f"; ETTR {min(ettrs):.2f}–{max(ettrs):.2f}"
        if best is not None:
            values = ", ".join(f"{k}={v}" for k, v in best.sweep_values.items())
            line += f"; best eval loss {best.eval_loss:.4f}: {best.run} ({values})"
        lines.append(line)
    return lines


# How long neither squeue nor sacct may know a job before waiting gives up on it (a cluster without
# accounting forgets a job once it leaves squeue): UNKNOWN is then the end. Read when a wait starts.
UNKNOWN_GRACE_S = 60.0


class EndRule:
    """The one rule every wait (``--wait``, ``status --watch``, ``logs -f``) ends by: a run is over once its newest
    job has ended, or once SLURM has not known that job for ``grace_s`` seconds in a row."""

    def __init__(self, grace_s: float | None = None) -> None:
        self.grace_s = UNKNOWN_GRACE_S if grace_s is None else grace_s
        self.unknown_since: dict[str, float] = {}  # run path -> when it was first seen UNKNOWN

    def over(self, status: RunStatus) -> bool:
        """Whether ``status`` (this poll's row of a run) ends the wait for that run."""
        if status.state != "UNKNOWN":
            self.unknown_since.pop(status.path, None)
            return status.ended
        since = self.unknown_since.setdefault(status.path, time.monotonic())
        return time.monotonic() - since >= self.grace_s


def watch(find: Callable[[], Sequence[Path]], on_poll: Callable[[list[RunStatus]], None] | None = None,
          interval: float = 2.0, unknown_grace_s: float | None = None) -> list[RunStatus]:  # fmt: skip
    """Poll the runs ``find`` names (asked again each time: new runs show up) until each is over (``EndRule``).

    SLURM is asked once per poll for all of them; returns the last poll's rows.
    """
    rule = EndRule(unknown_grace_s)
    while True:
        rows = run_statuses(find())
        if on_poll:
            on_poll(rows)
        if all([rule.over(r) for r in rows]):  # a list: every row's UNKNOWN clock is updated
            return rows
        time.sleep(interval)


def wait_for(path: Path, on_poll: Callable[[RunStatus], None] | None = None, interval: float = 2.0,
             unknown_grace_s: float | None = None) -> RunStatus:  # fmt: skip
    """Poll until the run's newest job has ended (or SLURM has not known it for a while); its final status."""
    show = (lambda rows: on_poll(rows[0])) if on_poll else None
    return watch(lambda: [path], show, interval, unknown_grace_s)[0]
