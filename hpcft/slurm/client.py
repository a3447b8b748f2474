"""The only module that runs SLURM's commands (sbatch, squeue, sacct, scancel).

Reading (running a command) is kept apart from parsing (pure functions of the text, tested with
recorded real output). A failing command raises ``SubmissionError`` with argv, exit code and stderr.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hpcft.errors import SubmissionError

SQUEUE_FORMAT = "%i|%T|%M|%D|%R"
SACCT_FIELDS = "JobID,State,Elapsed,NNodes,NodeList,ExitCode"
# A job stays in squeue a while after it ends (MinJobAge), and reaches sacct a moment after.
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
        """True once the job can no longer run (requeued jobs go back to PENDING)."""
        return self.state in ENDED


def sbatch_available() -> bool:
    """True when ``sbatch`` is on PATH."""
    return shutil.which("sbatch") is not None


def run(argv: Sequence[str], *, timeout: float = 60, hint: str | None = None) -> str:
    """Run a SLURM command, return stdout; raise ``SubmissionError`` on failure."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SubmissionError(argv, 127, f"{argv[0]}: command not found", hint or "is SLURM installed here?") from None
    except subprocess.TimeoutExpired:
        raise SubmissionError(argv, -1, f"no answer within {timeout:.0f} s", "is slurmctld reachable?") from None
    if proc.returncode != 0:
        raise SubmissionError(argv, proc.returncode, proc.stderr or proc.stdout, hint)
    return proc.stdout


def parse_sbatch_parsable(text: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``: return the job id."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    job_id = line.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"unexpected sbatch --parsable output: {text!r}")
    return job_id


def submit(argv: Sequence[str]) -> str:
    """Run ``sbatch --parsable …`` and return the job id."""
    out = run(argv, hint="nothing was submitted and the run directory was removed; `hpcft plan` shows the script")
    return parse_sbatch_parsable(out)


def parse_squeue(text: str) -> dict[str, JobState]:
    """Parse ``squeue -h -o SQUEUE_FORMAT`` lines."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            out[parts[0]] = JobState(parts[0], parts[1], parts[2], parts[3], parts[4])
    return out


def parse_sacct(text: str) -> dict[str, JobState]:
    """Parse ``sacct -X -n -P -o SACCT_FIELDS`` lines (states like ``CANCELLED by 0`` are cut)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 6:
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"
            out[parts[0]] = JobState(parts[0], state, parts[2], parts[3], parts[4], parts[5])
    return out


def query_jobs(job_ids: Sequence[str]) -> dict[str, JobState]:
    """State of each job: squeue while it is known there, sacct once it has left or ended."""
    ids = [j for j in job_ids if j.isdigit()]
    if not ids:
        return {}
    joined = ",".join(ids)
    # squeue exits 1 for ids it no longer knows; that is an answer, not an error.
    live = _quiet(["squeue", "-h", "-j", joined, "-o", SQUEUE_FORMAT], parse_squeue)
    missing = [j for j in ids if j not in live or live[j].ended]
    done = (
        _quiet(["sacct", "-X", "-n", "-P", "-j", ",".join(missing), "-o", SACCT_FIELDS], parse_sacct) if missing else {}
    )
    return {**live, **done}


def _quiet(argv: list[str], parse) -> dict[str, JobState]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    return parse(proc.stdout)


def cancel(job_id: str) -> None:
    """``scancel JOBID``."""
    run(["scancel", job_id])


def requeue(job_id: str) -> None:
    """``scontrol requeue JOBID`` (the job must have been submitted with ``--requeue``)."""
    run(["scontrol", "requeue", job_id])
