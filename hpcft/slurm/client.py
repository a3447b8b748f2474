"""The only module that runs SLURM's commands (sbatch, squeue, sacct, scancel, scontrol).

Reading (running a command) is kept apart from parsing (pure functions of the text, tested with
output recorded on the lab cluster, ``tests/data/slurm/``). Every command goes through one
``Runner``, ``run_process`` unless a caller (a test) passes another. A failing command raises
``SubmissionError`` with argv, exit code and stderr. This module decides nothing about runs.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hpcft.errors import MaybeSubmittedError, RunError, SubmissionError

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%T|%M|%D|%R"
SACCT_FIELDS = "JobID,State,Elapsed,NNodes,NodeList,ExitCode"
# squeue lists only jobs that can still run (its default --states), so ended jobs come from sacct.
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
}
# Ids hpcft asks about: a job "123" or an array task "123_4" (never a pending range "123_[1-2%1]").
_JOB_ID = re.compile(r"\d+(_\d+)?")


@dataclass(frozen=True)
class JobState:
    """One job as SLURM reports it."""

    job_id: str
    state: str
    elapsed: str = ""
    nodes: str = ""
    reason_or_nodelist: str = ""
    exit_code: str = ""

    @property
    def ended(self) -> bool:
        """True once the job can no longer run (requeued jobs go back to PENDING, sacct: REQUEUED)."""
        return self.state in ENDED


class Runner(Protocol):
    """Runs one command as ``subprocess.run`` does, including its FileNotFoundError / TimeoutExpired."""

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]: ...


def run_process(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The default ``Runner``: the one subprocess call on hpcft's SLURM side."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def sbatch_available() -> bool:
    """True when ``sbatch`` is on PATH."""
    return shutil.which("sbatch") is not None


def run(argv: Sequence[str], *, timeout: float = 60, hint: str | None = None, runner: Runner | None = None) -> str:
    """Run a SLURM command, return stdout; raise ``SubmissionError`` on failure."""
    try:
        proc = (runner or run_process)(argv, timeout)
    except FileNotFoundError:
        raise SubmissionError(argv, 127, f"{argv[0]}: command not found", hint or "is SLURM installed here?") from None
    except subprocess.TimeoutExpired:
        raise SubmissionError(argv, -1, f"no answer within {timeout:.0f} s", "is slurmctld reachable?") from None
    if proc.returncode != 0:
        raise SubmissionError(argv, proc.returncode, proc.stderr or proc.stdout, hint)
    return proc.stdout


def parse_sbatch_parsable(text: str, argv: Sequence[str] = ("sbatch", "--parsable")) -> str:
    """Return the job id that ``sbatch --parsable`` printed as ``JOBID`` or ``JOBID;CLUSTER``.

    Only the last line is read: a site's sbatch wrapper may print notices before it.

    Raises:
        SubmissionError: no job id in ``text``; sbatch exited 0, so a job may be queued all the same.
    """
    lines = text.strip().splitlines()
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    if not job_id.isdigit():
        got = f"unreadable output: expected `JOBID` or `JOBID;CLUSTER` on the last line, got {text!r}"
        hint = (
            "sbatch exited 0, so a job may be queued although hpcft has no record of it: find it with "
            "`squeue --me` and `scancel` it; hpcft needs `sbatch --parsable`, unchanged by site wrappers"
        )
        raise MaybeSubmittedError(argv, 0, got, hint)
    return job_id


SUBMIT_HINT = "nothing was submitted and the run directory was removed; `hpcft plan` shows the script"


def submit(argv: Sequence[str], *, runner: Runner | None = None, hint: str = SUBMIT_HINT) -> str:
    """Run ``sbatch --parsable …`` and return the job id (``hint``: what the caller's failure leaves behind)."""
    return parse_sbatch_parsable(run(argv, hint=hint, runner=runner), argv)


def parse_squeue(text: str) -> dict[str, JobState]:
    """Parse ``squeue -h -o SQUEUE_FORMAT`` lines, keyed by ``%i`` (``12``, ``10_0``, ``10_[1-2%1]``)."""
    out = {}
    for fields in _split(text, 5, "squeue"):
        out[fields[0]] = JobState(*fields)
    return out


def parse_sacct(text: str) -> dict[str, JobState]:
    """Parse ``sacct -X -n -P -o SACCT_FIELDS`` lines, keyed by JobID; the last line of an id wins.

    With ``--duplicates`` sacct prints a requeued job once per run, oldest first (``REQUEUED``, then
    the newest run's state). Steps (``8.batch``, ``8.extern``, ``8.0``; absent with ``-X``) are
    skipped; ``CANCELLED by 0`` is cut to ``CANCELLED``.
    """
    out = {}
    for job_id, state, *rest in _split(text, 6, "sacct"):
        if "." not in job_id:
            out[job_id] = JobState(job_id, state.split()[0] if state else "UNKNOWN", *rest)
    return out


def _split(text: str, n: int, command: str) -> list[list[str]]:
    """The ``|``-separated lines of ``text`` with ``n`` fields; others are logged and skipped."""
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == n:
            rows.append(fields)
        elif line.strip():
            log.warning("skipped a %s line with %d fields instead of %d: %r", command, len(fields), n, line)
    return rows


def query_jobs(job_ids: Sequence[str], *, runner: Runner | None = None) -> dict[str, JobState]:
    """State of each job: squeue while it is known there, sacct once it has left or ended."""
    ids = [j for j in job_ids if _JOB_ID.fullmatch(j)]
    if not ids:
        return {}
    live = _query(["squeue", "-h", "-j", ",".join(ids), "-o", SQUEUE_FORMAT], parse_squeue, runner)
    missing = [j for j in ids if j not in live or live[j].ended]
    if not missing:
        return live
    done = _query(["sacct", "-X", "-n", "-P", "-j", ",".join(missing), "-o", SACCT_FIELDS], parse_sacct, runner)
    return {**live, **done}


UNKNOWN_JOB = "Invalid job id specified"  # squeue's stderr (exit 1) for an id it does not know: an answer


def queued_job(job_id: str, *, runner: Runner | None = None) -> JobState | None:
    """The job as squeue lists it now, or None when squeue answered that it does not know it.

    Raises ``RunError`` when squeue gave no answer (the controller down or busy, a timeout): "not known"
    and "no answer" are different facts, and a caller deciding whether a run is live must not mix them.
    """
    argv = ["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT]
    try:
        proc = (runner or run_process)(argv, 30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise RunError(f"squeue did not answer about job {job_id}: {e}", hint=NO_ANSWER_HINT) from e
    if proc.returncode != 0 and UNKNOWN_JOB not in proc.stderr:
        why = proc.stderr.strip() or f"exit {proc.returncode}"
        raise RunError(f"squeue did not answer about job {job_id}: {why}", hint=NO_ANSWER_HINT)
    return parse_squeue(proc.stdout).get(job_id)


NO_ANSWER_HINT = "try again once SLURM answers (`squeue --me`); nothing was changed"


def _query(argv: list[str], parse: Callable[[str], dict[str, JobState]], runner: Runner | None) -> dict[str, JobState]:
    """Parse what a query printed; no answer is an empty answer (the caller shows UNKNOWN)."""
    try:
        proc = (runner or run_process)(argv, 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    # squeue exits 1 ("Invalid job id specified") when it knows none of the ids: an answer, not an error.
    return parse(proc.stdout)


STEP_FIELDS = "JobID,State,MaxRSS,NodeList"


@dataclass(frozen=True)
class StepState:
    """One step of a job as sacct reports it (``J.batch``, ``J.extern``, ``J.0``, ...)."""

    step: str
    state: str
    max_rss: str
    nodes: str


def parse_sacct_steps(text: str) -> list[StepState]:
    """Parse ``sacct -n -P -o STEP_FIELDS -j J`` lines: the steps (lines whose JobID has a dot)."""
    return [
        StepState(job_id, state.split()[0] if state else "UNKNOWN", rss, nodes)
        for job_id, state, rss, nodes in _split(text, 4, "sacct")
        if "." in job_id
    ]


def query_steps(job_id: str, *, runner: Runner | None = None) -> list[StepState]:
    """The steps of job ``job_id`` so far (empty when sacct is unavailable or knows none yet)."""
    if not _JOB_ID.fullmatch(job_id):
        return []
    try:
        proc = (runner or run_process)(["sacct", "-n", "-P", "-j", job_id, "-o", STEP_FIELDS], 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return parse_sacct_steps(proc.stdout)


USER_JOBS_FORMAT = "%i|%T|%k"
RUN_COMMENT = "hpcft:"  # hpcft's batch scripts carry --comment=hpcft:RUN_DIR


def parse_user_jobs(text: str, prefix: str) -> dict[str, str]:
    """``squeue --me -h -o USER_JOBS_FORMAT`` → job id → what follows ``prefix`` in its comment (hpcft's jobs)."""
    return {job: comment[len(prefix) :] for job, _, comment in _split(text, 3, "squeue") if comment.startswith(prefix)}


def user_jobs(prefix: str, *, runner: Runner | None = None) -> dict[str, str]:
    """This user's jobs SLURM knows whose ``--comment`` starts with ``prefix``: job id → the rest of it."""
    try:
        proc = (runner or run_process)(["squeue", "--me", "-h", "-o", USER_JOBS_FORMAT], 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    return parse_user_jobs(proc.stdout, prefix)


def cancel(job_id: str, *, runner: Runner | None = None) -> None:
    """``scancel JOBID``."""
    run(["scancel", job_id], runner=runner)


def requeue(job_id: str, *, runner: Runner | None = None) -> None:
    """``scontrol requeue JOBID`` (the job must have been submitted with ``--requeue``)."""
    run(["scontrol", "requeue", job_id], runner=runner)


def _squeue_job_field(job_id: str, field: str, runner: Runner | None) -> str | None:
    """``squeue -h -j JOB -o FIELD``'s output for one job, or None when squeue cannot say."""
    if not _JOB_ID.fullmatch(job_id):
        return None
    try:
        proc = (runner or run_process)(["squeue", "-h", "-j", job_id, "-o", field], 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def job_nodelist(job_id: str, *, runner: Runner | None = None) -> str | None:
    """The nodes job ``job_id`` holds now (``squeue -h -j J -o %N``: a failed node leaves a ``--no-kill``
    job), or None when squeue cannot say."""
    lines = (_squeue_job_field(job_id, "%N", runner) or "").split()
    return lines[0] if len(lines) == 1 else None


def parse_end_time(text: str) -> float | None:
    """``squeue -h -j J -o %e`` (EndTime, the controller's local time: ``2026-12-02T19:03:12``) → epoch seconds;
    None for a job without one (``N/A``, ``Unknown``, no line)."""
    lines = text.split()
    if len(lines) != 1:
        return None
    try:
        return datetime.fromisoformat(lines[0]).timestamp()
    except ValueError:
        return None


def job_end_time(job_id: str, *, runner: Runner | None = None) -> float | None:
    """When SLURM will end job ``job_id`` at its time limit (epoch seconds), or None when squeue cannot say."""
    out = _squeue_job_field(job_id, "%e", runner)
    return parse_end_time(out) if out is not None else None


NODE_FORMAT = "%N|%T"
# sinfo %T: the node's state; a trailing "*" means its slurmd does not respond. Usable: a job can run there.
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})


def parse_node_states(text: str) -> dict[str, str]:
    """``sinfo -h -N -n NODES -o NODE_FORMAT`` → node → state (a node listed once per partition)."""
    return {node: state for node, state in _split(text, 2, "sinfo")}


def node_states(nodes: Sequence[str], *, runner: Runner | None = None) -> dict[str, str]:
    """The SLURM state of each of ``nodes`` ({} when sinfo cannot say)."""
    try:
        proc = (runner or run_process)(["sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", NODE_FORMAT], 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    return parse_node_states(proc.stdout) if proc.returncode == 0 else {}


def parse_partition_nodes(text: str, partition: str | None) -> list[str]:
    """``sinfo -h -N -o "%N|%P"`` → the nodes of ``partition`` (None: the default one, marked ``*``)."""
    rows = _split(text, 2, "sinfo")
    if partition is None:
        return sorted({node for node, part in rows if part.endswith("*")})
    return sorted({node for node, part in rows if part.rstrip("*") in partition.split(",")})


def partition_nodes(partition: str | None, *, runner: Runner | None = None) -> list[str] | None:
    """The nodes of ``partition`` (None: the default partition), or None when sinfo cannot say."""
    try:
        proc = (runner or run_process)(["sinfo", "-h", "-N", "-o", "%N|%P"], 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return parse_partition_nodes(proc.stdout, partition) if proc.returncode == 0 else None


def exclude_nodes(job_id: str, hostlist: str, *, runner: Runner | None = None) -> None:
    """``scontrol update JobId=J ExcNodeList=HOSTS``: the job (pending, or running before a requeue) avoids them."""
    run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={hostlist}"], runner=runner)


RUN_FIELDS = "JobID,Submit,Start,End"


def _when(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None  # "Unknown", "None": not started or not ended yet


def parse_job_runs(text: str) -> list[tuple[str, float, float | None, float | None]]:
    """``sacct --duplicates -X -n -P -o RUN_FIELDS`` → (job, submit, start, end) per run of each job, in order
    (a requeued job has one line per run); lines without a submit time are skipped."""
    out = []
    for job_id, submit, start, end in _split(text, 4, "sacct"):
        if "." not in job_id and _when(submit) is not None:
            out.append((job_id, _when(submit), _when(start), _when(end)))
    return out


def job_runs(
    job_ids: Sequence[str], *, runner: Runner | None = None
) -> list[tuple[str, float, float | None, float | None]]:
    """Every run of the jobs, from sacct ([] when sacct cannot say)."""
    ids = [j for j in job_ids if _JOB_ID.fullmatch(j)]
    if not ids:
        return []
    argv = ["sacct", "--duplicates", "-X", "-n", "-P", "-o", RUN_FIELDS, "-j", ",".join(ids)]
    try:
        proc = (runner or run_process)(argv, 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return parse_job_runs(proc.stdout) if proc.returncode == 0 else []


EVENT_FIELDS = "NodeName,TimeStart,TimeEnd,State,Reason"
_NODE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def parse_node_events(text: str) -> list[tuple[str, float, str, str]]:
    """``sacctmgr -n -P show event ... format=EVENT_FIELDS`` → (node, start, state, reason) per node event; the
    cluster's own events (no node) are skipped."""
    out = []
    for node, start, _end, state, reason in _split(text, 5, "sacctmgr"):
        when = _when(start)
        if node and when is not None:
            out.append((node, when, state, reason))
    return out


def node_events(
    nodes: Sequence[str], since: float, *, runner: Runner | None = None
) -> list[tuple[str, float, str, str]]:
    """The node state changes SLURM's accounting recorded for ``nodes`` since ``since`` (a node marked DOWN, drained:
    what ended a job NODE_FAIL, with SLURM's reason); [] when there is no accounting or it cannot say."""
    names = [n for n in nodes if _NODE_NAME.fullmatch(n)]
    if not names:
        return []
    start = datetime.fromtimestamp(since).strftime("%Y-%m-%dT%H:%M:%S")
    argv = ["sacctmgr", "-n", "-P", "show", "event", f"Nodes={','.join(names)}", f"Start={start}",
            f"format={EVENT_FIELDS}"]  # fmt: skip
    try:
        proc = (runner or run_process)(argv, 30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return parse_node_events(proc.stdout) if proc.returncode == 0 else []
