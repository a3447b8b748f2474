"""Errors hpcft raises for problems a user can fix.

Every error says what was wrong, what was expected and, where it helps, a HINT.
Only ``hpcft.cli`` turns these into exit codes and messages; library code raises them.
"""

from __future__ import annotations

from collections.abc import Sequence


class HpcftError(Exception):
    """Base class: a problem the user can act on (no traceback is shown for it)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\nHINT: {self.hint}" if self.hint else self.message


class ConfigError(HpcftError):
    """The job description is wrong; lists every problem found at once."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the job description{where}:"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}\n{body}")


class SubmissionError(HpcftError):
    """A SLURM command (or the local launcher) failed; carries argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, hint: str | None = None):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        cmd = " ".join(self.argv)
        super().__init__(f"`{cmd}` failed with exit code {returncode}:\n{self.stderr}", hint)


class MaybeSubmittedError(SubmissionError):
    """sbatch exited 0 but its output named no job id: a job may be queued, so its run directory stays."""


class RunError(HpcftError):
    """A run directory is missing, unreadable or in a state that forbids the request."""


class UnreadableError(RunError):
    """A run's file or directory this user may not read (another user's run in a shared runs directory)."""


class LaunchError(HpcftError):
    """A node cannot start its workers (rendezvous, preflight, launcher missing)."""


class TransientLaunchError(LaunchError):
    """A node could not start this time, for a reason a rerun may not meet again (a DNS lookup, an ssh check, a
    peer late to publish its port): a failure within ``run.max_failures``, never FATAL."""
