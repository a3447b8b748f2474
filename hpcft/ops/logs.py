"""Reading a run's logs: a job's output, one rank's log, or one node's ranks, optionally following.

Decides which file(s) ``hpcft logs`` shows and when following stops:

- default: the newest job's output (``RUN/logs/slurm-<job>.out`` for sbatch, the submitit task-0
  log, ``RUN/logs/local.out``), which holds rank 0's console and every node's launcher lines;
  following switches to the newer job's file when state.json gains a job (a resume);
- ``--job ID``: that job's output (an older job of the run, e.g. before a resume);
- ``--rank N``: that rank's lines of the node logs (``RUN/logs/node-<host>.log``, every line prefixed
  ``<time> rank<N>``; ``rank-<N>.log`` of runs from before node logs), across requeues;
- ``--node NAME``: the rank-log lines written while each rank ran on NAME. Each rank's segment opens
  with ``rank R of W on HOST: job J restart K`` (``hpcft.train.main``), so a rank that moved to another
  node after a requeue is attributed correctly. User scripts write no rank logs.

Following polls the files every ``interval`` seconds but asks the scheduler whether the run has
ended at most every ``SCHED_INTERVAL`` seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcft.errors import RunError
from hpcft.rundir import layout, store

SCHED_INTERVAL = 5.0
RANK_HEADER = re.compile(r"\brank (\d+) of \d+ on (\S+?): job (\S+)")
LINE_RANK = re.compile(r"^\S+ \S+ rank(\d+) ")  # a node log line: "<date> <time> rank<N> ..."


def job_output(run: Path, state: dict[str, Any], job_id: str | None = None) -> Path:
    """The output file of job ``job_id`` (default: the newest job) of ``run``."""
    logs = run / layout.LOGS_DIR
    if not state["jobs"] or state["backend"] == "local":
        return logs / "local.out"
    ids = [j["id"] for j in state["jobs"]]
    if job_id is not None and job_id not in ids:
        raise RunError(f"{run.name} has no job {job_id}; its jobs: {', '.join(ids)}", hint="`hpcft status` lists them")
    job = job_id or ids[-1]
    if state["backend"] == "submitit":
        return run / "submitit" / f"{job}_0_log.out"
    return logs / f"slurm-{job}.out"


class FileTail:
    """New text of a file since the last read; starts over if the file was truncated or replaced."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read(self, final: bool = False) -> str:
        """Text appended since the previous call ('' if none, or no file yet).

        A torn last line (still being written) waits for the next call unless ``final``.
        """
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, 2) < self.offset:  # truncated (e.g. a requeued job's output reopened)
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return ""
        except OSError as e:  # a directory in its place, or a path through a file: damage, said plainly
            raise RunError(f"cannot read {self.path}: {e.strerror}", hint=store.DAMAGED_HINT) from None
        # Keep a torn last line for the next read, so line-based filters see whole lines.
        cut = len(data) if final or data.endswith(b"\n") else data.rfind(b"\n") + 1
        self.offset += cut
        return data[:cut].decode(errors="replace")


class RankLines:
    """New rank-log lines, from every node log (and every legacy per-rank file), as ``(rank, line)``."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.tails: dict[Path, FileTail] = {}

    def read(self, final: bool = False) -> list[tuple[int, str]]:
        """Lines written since the previous call, file by file (node logs, then legacy rank files by rank)."""
        logs = self.run / layout.LOGS_DIR
        out = []
        for path in [*sorted(logs.glob("node-*.log")), *sorted(logs.glob("rank-*.log"), key=_rank_number)]:
            tail = self.tails.setdefault(path, FileTail(path))
            legacy = None if path.name.startswith("node-") else _rank_number(path)
            for line in tail.read(final).splitlines(keepends=True):
                match = LINE_RANK.match(line)
                rank = legacy if legacy is not None else int(match.group(1)) if match else None
                if rank is not None:
                    out.append((rank, line))
        return out


def _rank_number(path: Path) -> int:
    digits = path.stem.removeprefix("rank-")
    return int(digits) if digits.isdigit() else 1 << 30


class RankFilter:
    """One rank's lines (``hpcft logs --rank N``)."""

    def __init__(self, run: Path, rank: int) -> None:
        self.lines, self.rank = RankLines(run), rank

    def read(self, final: bool = False) -> str:
        """New lines of this rank."""
        return "".join(line for rank, line in self.lines.read(final) if rank == self.rank)

    def empty_note(self) -> str:
        """Why nothing was shown."""
        return f"(no log lines of rank {self.rank} yet; rank logs are written by the hpcft trainer)\n"


class NodeFilter:
    """The rank-log lines of every rank while it ran on ``node`` (optionally one job), prefixed ``[rank-N]``."""

    def __init__(self, run: Path, node: str, job: str | None = None) -> None:
        self.lines, self.node, self.job = RankLines(run), node, job
        self.where: dict[int, tuple[str, str]] = {}  # rank → (host, job) of its current segment
        self.hosts: set[str] = set()

    def read(self, final: bool = False) -> str:
        """New matching lines."""
        out = []
        for rank, line in self.lines.read(final):
            header = RANK_HEADER.search(line)
            if header:
                self.where[rank] = (header.group(2), header.group(3))
                self.hosts.add(header.group(2))
            here = self.where.get(rank)
            if here and here[0] == self.node and (self.job is None or here[1] == self.job):
                out.append(f"[rank-{rank}] {line}")
        return "".join(out)

    def empty_note(self) -> str:
        """Why nothing was shown."""
        seen = ", ".join(sorted(self.hosts)) or "none (rank logs are written by the hpcft trainer)"
        return f"(no rank log lines from node {self.node}; ranks ran on: {seen})\n"


class LogTail:
    """A job's output; without a fixed job, the newest job's output at every read."""

    def __init__(self, run: Path, job: str | None) -> None:
        self.run, self.job = run, job
        self.tail = FileTail(self._choose())

    def _choose(self) -> Path:
        return job_output(self.run, store.read_state(self.run), self.job)

    def read(self, final: bool = False) -> str:
        """New text; when the run gained a job, the rest of the old file, a separator, the new file."""
        text = self.tail.read(final)
        newer = self._choose()
        if newer != self.tail.path:
            text += self.tail.read(final=True) + f"==> {newer.name} (newer job) <==\n"
            self.tail = FileTail(newer)
            text += self.tail.read(final)
        return text

    def empty_note(self) -> str:
        """Why nothing was shown."""
        return f"(no output yet: {self.tail.path})\n"


def stream(
    run: Path,
    rank: int | None = None,
    follow: bool = False,
    *,
    node: str | None = None,
    job: str | None = None,
    interval: float = 0.5,
    sched_interval: float = SCHED_INTERVAL,
) -> Iterator[str]:
    """Yield the chosen log's text; with ``follow``, keep yielding new text until the run has ended."""
    if rank is not None and node is not None:
        raise RunError("--rank and --node exclude each other", hint="a rank log, or all ranks of one node")
    source: LogTail | NodeFilter | RankFilter
    if node is not None:
        source = NodeFilter(run, node, job)
    else:
        source = RankFilter(run, rank) if rank is not None else LogTail(run, job)
    ended = _EndWatch(run, job, sched_interval)
    shown = False
    while True:
        text = source.read(final=not follow)
        if text:
            shown = True
            yield text
        if not follow or (not text and ended()):
            text = source.read(final=True)  # what was written while we asked the scheduler
            if text or not shown:
                yield text or source.empty_note()
            return
        if not text:
            time.sleep(interval)


class _EndWatch:
    """Whether the run (or its job ``job``) has ended, asking the scheduler at most every ``every`` s."""

    def __init__(self, run: Path, job: str | None, every: float) -> None:
        self.run, self.job, self.every = run, job, every
        self.last, self.answer = float("-inf"), False
        self.rule: Any = None  # status.EndRule, made at the first ask (status is imported late)

    def __call__(self) -> bool:
        if self.answer or time.monotonic() - self.last < self.every:
            return self.answer
        from hpcft.ops import status as monitor

        self.last = time.monotonic()
        state = store.read_state(self.run)
        older = self.job is not None and state["jobs"] and state["jobs"][-1]["id"] != self.job
        self.rule = self.rule or monitor.EndRule()  # the rule `status --watch` and `--wait` end by
        over = self.rule.over(monitor.run_statuses([self.run])[0])
        self.answer = bool(older) or over
        return self.answer


def rank_text(run: Path, rank: int) -> str:
    """Everything rank ``rank`` logged so far (all node logs; the legacy per-rank file)."""
    return RankFilter(run, rank).read(final=True)
