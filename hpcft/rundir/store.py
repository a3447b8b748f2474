"""The run directory on the shared filesystem: writing it, its state.json, finding and reading runs.

Names of the files: ``rundir.layout``. Writes are atomic (temp file + rename) so a reader on another
node never sees half a file, and a run directory that could not be written completely is removed
again. Imports no planner: ranks use this module to read their spec and write markers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hpcft.errors import RunError, UnreadableError
from hpcft.rundir.layout import CHECKPOINTS_DIR, LOGS_DIR, METRICS_EVENTS_FILE, METRICS_FILE, SPEC_FILE, STATE_FILE
from hpcft.spec.io import load_spec_text, load_yaml

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan
    from hpcft.spec import JobSpec


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_run_dir(plan: Plan) -> Path:
    """Create the run directory with every file of the plan; on any failure remove it again."""
    run = Path(plan.run_dir)
    try:
        run.parent.mkdir(parents=True, exist_ok=True)
        run.mkdir()
    except FileExistsError:
        raise RunError(f"run directory already exists: {run}", hint="wait a second or pick another run.name") from None
    except OSError as e:
        raise RunError(f"cannot create the run directory {run}: {e.strerror}") from None
    try:
        (run / LOGS_DIR).mkdir()
        for name, text in plan.files.items():
            write_atomic(run / name, text)
        write_state(run, {"backend": plan.backend, "jobs": [], "created": now_iso()})
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    return run


def now_iso() -> str:
    """The current UTC time, ISO 8601, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_text(path: Path, errors: str = "strict") -> str | None:
    """A run-directory file's text, or None when it does not exist.

    Every reader of the run directory goes through here: a file that is a directory, unreadable or
    (with ``errors="strict"``) not UTF-8 is a ``RunError`` naming it, never a traceback.
    """
    return _read(path, lambda: path.read_text(encoding="utf-8", errors=errors))


def read_tail(path: Path, size: int) -> tuple[int, str] | None:
    """(offset, text) of the whole lines in the last ``size`` bytes of a file, or None when it does not exist.

    The offset is where the first whole line begins; undecodable bytes are replaced.
    """

    def tail() -> tuple[int, str]:
        with open(path, "rb") as f:
            start = max(f.seek(0, os.SEEK_END) - size - 1, 0)  # one byte more: is the first line whole?
            f.seek(start)
            data = f.read(size + 1)
        if start > 0:  # drop up to the first newline: a line begins after it
            cut = data.find(b"\n") + 1
            start, data = (start + cut, data[cut:]) if cut else (start + len(data), b"")
        return start, data.decode("utf-8", errors="replace")

    return _read(path, tail)


def _read(path: Path, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise RunError(f"{path} is damaged: a directory where a file belongs", hint=DAMAGED_HINT) from None
    except UnicodeDecodeError as e:
        raise RunError(f"{path} is damaged: not UTF-8 text (byte {e.start})", hint=DAMAGED_HINT) from None
    except PermissionError:
        raise UnreadableError(f"permission denied: {path}", hint=PERMISSION_HINT) from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}") from None


DAMAGED_HINT = "restore the file from a backup, or move the run directory aside; other runs are not affected"
# A runs directory a team shares holds runs of other users, whose modes may keep them closed to you.
PERMISSION_HINT = ("ask the run's owner to let you read it (`chmod -R g+rX` on the run directory, for a group you "
                   "share), or check the permissions with `ls -ld`")  # fmt: skip

# state.json: the fields readers rely on and their types (others are kept as they are).
_STATE_FIELDS = {"backend": str, "jobs": list, "events": list, "failures": int, "restarts": int, "cancelled": bool,
                 "created": str, "requested_nodes": int, "stalls": int, "segment_start": list,
                 "goodput": dict, "auto_save": dict}  # fmt: skip
_JOB_FIELDS = {"id": str, "pid": int, "rc": int, "restart": int, "rank_starts": int, "host": str}


def read_state(run: Path) -> dict[str, Any]:
    """``RUN/state.json`` (job ids, backend, flags), checked: a damaged file is a ``RunError`` saying what is wrong."""
    path = run / STATE_FILE
    text = read_text(path)
    if text is None:
        raise RunError(f"no {STATE_FILE} in {run}: not an hpcft run directory, or a submit is writing it right now")
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is damaged: not JSON ({e})", hint=DAMAGED_HINT) from None
    problem = _state_problem(state)
    if problem:
        raise RunError(f"{path} is damaged: {problem}", hint=DAMAGED_HINT)
    return state


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    for key in ("backend", "jobs"):
        if key not in state:
            return f"no {key!r}"
    wrong = _wrong_types(state, _STATE_FIELDS)
    if wrong:
        return wrong
    for i, job in enumerate(state["jobs"]):
        if not isinstance(job, dict) or "id" not in job:
            return f"jobs[{i}]: expected an object with an 'id', got {json.dumps(job)[:60]}"
        if wrong := _wrong_types(job, _JOB_FIELDS):
            return f"jobs[{i}].{wrong}"
    bad = next((e for e in state.get("events", []) if not isinstance(e, dict)), None)
    return f"events: expected objects, got {json.dumps(bad)[:60]}" if bad is not None else None


def _wrong_types(data: dict[str, Any], types_: dict[str, type]) -> str | None:
    for key, want in types_.items():
        value = data.get(key)
        if key in data and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            return f"{key}: expected {want.__name__}, got {json.dumps(value)[:60]}"
    return None


def write_state(run: Path, state: dict[str, Any]) -> None:
    """Replace ``RUN/state.json`` atomically."""
    write_atomic(run / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def update_state(run: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write ``state.json`` under an exclusive lock (several writers: submit, runner)."""
    with locked(run / ".state.lock"):
        state = read_state(run)
        change(state)
        write_state(run, state)
    return state


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: one writer at a time."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_job(run: Path, job_id: str, **fields: Any) -> dict[str, Any]:
    """Add a job to the run's state, or update the fields of the job with that id."""

    def change(state: dict[str, Any]) -> None:
        for job in state["jobs"]:
            if job["id"] == job_id:
                job.update(fields)
                return
        state["jobs"].append({"id": job_id, "submitted": now_iso(), **fields})

    return update_state(run, change)


def record_rank_start(run: Path, job_id: str, world: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Count a start of the ranks in the job's current segment; the in-job-restart event when it is not the first.

    begin-job zeroes ``rank_starts`` for every segment (a new job, or a requeue). A second start
    within one segment means torchrun or ``hpcft node`` restarted the ranks after a crash: a failure,
    bounded by ``run.max_failures`` together with requeues after crashes. ``world``: (ranks, spec.yaml's ranks).
    A restart into a smaller world, without a lost node (``JobSpec.survivor_nodes``), is that node's failure, and
    SLURM's end of the job for the same node (begin-job's ``lost``) is no second one; the restart that lets its
    agent back in is none (it came back: a killed rank's node slow to rejoin).
    """
    recorded: list[dict[str, Any]] = []

    def change(state: dict[str, Any]) -> None:
        job = next((j for j in state.get("jobs", []) if j.get("id") == job_id), None)
        if job is None or "rank_starts" not in job:
            return  # not started by begin-job (e.g. submitit): nothing to count against
        job["rank_starts"] = int(job["rank_starts"]) + 1
        if job["rank_starts"] > 1:
            event = {"job": job_id, "restart": job.get("restart", 0), "kind": "in-job restart", "action": "restart",
                     "reason": "a rank failed; every rank restarted inside the job from the newest checkpoint",
                     "time": now_iso()}  # fmt: skip
            ranks, planned = world or (0, 0)
            back = ranks == planned and world_shrunk(state, job_id, job.get("restart", 0), planned)
            if ranks < planned:
                event.update(ranks=ranks, reason=f"a node was lost; the ranks left ({ranks} of {planned}) train on "
                             "inside the job from the newest checkpoint")  # fmt: skip
            elif back:
                event.update(ranks=ranks, reason="the lost ranks are back: every rank restarted inside the job, all "
                             f"{ranks} of them")  # fmt: skip
            state.setdefault("events", []).append(event)
            state["failures"] = int(state.get("failures", 0)) + (0 if back else 1)
            recorded.append(event)

    update_state(run, change)
    return recorded[0] if recorded else None


def world_shrunk(state: Mapping[str, Any], job_id: str, restart: int, planned: int) -> bool:
    """Whether the ranks of this run of the job train in a smaller world than spec.yaml's ``planned`` ranks: its
    last in-job restart left a node out (``JobSpec.survivor_nodes``); pure."""
    restarts = [e for e in state.get("events", []) if e.get("kind") == "in-job restart"
                and (e.get("job"), int(e.get("restart") or 0)) == (job_id, int(restart))]  # fmt: skip
    return bool(restarts) and int(restarts[-1].get("ranks", planned)) < planned


def load_run_spec(run: Path) -> JobSpec:
    """The resolved spec of a run."""
    path = run / SPEC_FILE
    text = read_text(path)
    if text is None:
        raise RunError(f"{run} is not an hpcft run directory (no {SPEC_FILE})")
    return load_spec_text(text, str(path))


def raw_train_spec(run: Path) -> dict[str, Any]:
    """The ``train`` mapping of a run's spec.yaml as YAML data, unchecked ({} when unreadable): the few values
    ``status`` shows of every run, without checking the whole spec (a quarter of the time)."""
    try:
        data = load_yaml(read_text(run / SPEC_FILE) or "")
    except (RunError, yaml.YAMLError):
        return {}
    train = data.get("train") if isinstance(data, dict) else None
    return train if isinstance(train, dict) else {}


def run_output(train: dict[str, Any]) -> str | None:
    """``train.output`` of a run's ``raw_train_spec``, or None (unset, or a spec that cannot be read)."""
    output = train.get("output")
    return output if isinstance(output, str) and output else None


def find_run(ref: str, runs_dir: str | os.PathLike) -> Path:
    """A run by path, by name under ``runs_dir``, or by a unique prefix of its name."""
    direct = Path(ref)
    if _is_run(direct):
        return direct.resolve()
    base = Path(runs_dir)
    if _is_run(base / ref):
        return (base / ref).resolve()
    matches = [p for p in list_runs(base) if p.name.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunError(f"no run {ref!r} (not a run directory, nor a run under {base})", hint="`hpcft list` shows runs")
    names = ", ".join(p.name for p in matches[:5])
    raise RunError(f"{ref!r} matches {len(matches)} runs: {names}", hint="give more of the name")


def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Run directories under ``runs_dir``, oldest first."""
    base = Path(runs_dir)
    try:
        entries = list(base.iterdir()) if base.is_dir() else []
    except PermissionError:
        raise UnreadableError(f"permission denied: {base}", hint="check the permissions of the runs directory "
                              "(`ls -ld`), or give another one with --runs-dir") from None  # fmt: skip
    return sorted((p.resolve() for p in entries if _is_run(p)), key=_created)


def _is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (holds spec.yaml), or a directory closed to this user that may be one.

    Another user's run in a shared runs directory is listed (and shown UNREADABLE), never a traceback.
    """
    try:
        return (path / SPEC_FILE).is_file()
    except PermissionError:
        with contextlib.suppress(OSError):
            return path.is_dir()
        return False
    except OSError:  # e.g. a name too long: no run there
        return False


def _created(run: Path) -> float:
    """When a run was written (its spec.yaml's mtime; the directory's when spec.yaml cannot be looked at)."""
    for path in (run / SPEC_FILE, run):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``, checked: a line that is not a JSON object is skipped (a torn last line
    being written, damage), and so is a number field holding something else (``loss: "x"``)."""
    return _records(read_text(run / METRICS_FILE, errors="replace") or "")


def _records(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(_numbers_checked(record))
    return out


METRICS_TAIL_BYTES = 8 * 1024  # some 50 step records: what status needs of the newest steps


def read_progress(run: Path) -> list[dict[str, Any]]:
    """The metrics records ``status`` needs, at a cost that does not grow with the run's length.

    The train_begin records before the tail (``metrics-events.jsonl``, each with the log offset it ended
    at), then the records of the log's last ``METRICS_TAIL_BYTES``, in the log's own order (step records
    carry the newest eval loss). A run without the events file (written before it existed) is read whole.
    """
    events_text = read_text(run / METRICS_EVENTS_FILE, errors="replace")
    tail = read_tail(run / METRICS_FILE, METRICS_TAIL_BYTES)
    if events_text is None or tail is None:
        return read_metrics(run)
    start, text = tail
    before = []
    for record in _records(events_text):
        end = record.pop("log_end", None)
        if isinstance(end, int) and not isinstance(end, bool) and end <= start:
            before.append(record)
    return before + _records(text)


# metrics.jsonl fields that are numbers ("step" and "max_steps" whole numbers); see train/metrics.py.
_INT_METRICS = ("step", "max_steps", "start_step", "restart", "world_size", "machines")
_NUMBER_METRICS = ("loss", "eval_loss", "last_eval_loss", "tokens_per_s", "time", "lr", "grad_norm", "epoch")


def _numbers_checked(record: dict[str, Any]) -> dict[str, Any]:
    def ok(key: str, value: Any) -> bool:
        if isinstance(value, bool):
            return key not in _INT_METRICS + _NUMBER_METRICS
        if key in _INT_METRICS:
            return isinstance(value, int)
        return key not in _NUMBER_METRICS or isinstance(value, int | float)  # NaN stays: a diverged run shows it

    return {k: v for k, v in record.items() if ok(k, v)}


def latest_checkpoint(run: Path, output: str | None = None) -> Path | None:
    """The newest complete checkpoint of a run — hpcft-verified, or a user Trainer's own — or None.

    For status: damaged ones are skipped quietly.
    """
    from hpcft.rundir import checkpoints

    return checkpoints.newest_resumable(Path(output) if output else run / CHECKPOINTS_DIR)


def newest_job(state: dict[str, Any]) -> dict[str, Any] | None:
    """The newest job of a run: the last one recorded, or a sweep point's array task before it started."""
    if state.get("jobs"):
        return state["jobs"][-1]
    return {"id": state["array_task"]} if isinstance(state.get("array_task"), str) else None
