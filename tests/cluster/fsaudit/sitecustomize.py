"""Counts what a rank does to the shared filesystem (tests/cluster/test_fs_ops.py puts this on PYTHONPATH).

In every process that is a rank (RANK set when the event comes: a warm rank, forked from a server that
imported this file, sets RANK after its fork) of a run (HPCFT_RUN_DIR set): an audit hook records the file
system events Python raises (open, listdir, scandir, mkdir, remove, rename, ...) and wrappers record
``os.stat``/``os.lstat`` (which raise none: ``Path.exists`` is one), for paths under the runs directory
(the run and the data cache). At exit the records go to HPCFT_FSAUDIT_OUT/rank-N-PID.json as
[time, event, path, caller]. Writes to an already open file are not events and are not counted.
"""

import atexit
import json
import os
import sys
import time
import traceback

_OUT = os.environ.get("HPCFT_FSAUDIT_OUT")
_RUN = os.environ.get("HPCFT_RUN_DIR")
if _OUT and _RUN:
    _ROOT = os.path.dirname(os.path.realpath(_RUN))
    _records = []
    _EVENTS = {
        "open",
        "os.listdir",
        "os.scandir",
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.unlink",
        "os.chmod",
        "os.utime",
        "os.truncate",
        "shutil.rmtree",
        "shutil.copyfile",
        "os.link",
        "os.symlink",
    }

    def _path(arg):
        try:
            p = os.fsdecode(arg) if isinstance(arg, (str, bytes, os.PathLike)) else None
        except Exception:
            return None
        if p is None:
            return None
        p = os.path.abspath(p)
        return p if p.startswith(_ROOT) else None

    def _caller():
        """file:line of the innermost frame outside this harness and the standard library (who asked)."""
        for frame in reversed(traceback.extract_stack(limit=30)[:-2]):
            if "site-packages/" in frame.filename or "/hpcft/" in frame.filename:
                return f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}"
        return "?"

    def _hook(event, args):
        if event in _EVENTS and args and "RANK" in os.environ:
            p = _path(args[0])
            if p:
                _records.append((time.time(), event, p, _caller()))

    sys.addaudithook(_hook)

    def _counting(fn, name):
        def wrapper(path, *a, **k):
            p = _path(path) if "RANK" in os.environ else None
            if p:
                _records.append((time.time(), name, p, _caller()))
            return fn(path, *a, **k)

        return wrapper

    os.stat = _counting(os.stat, "os.stat")
    os.lstat = _counting(os.lstat, "os.lstat")

    @atexit.register
    def _dump():
        if "RANK" not in os.environ:
            return  # the warm ranks' server, or a launcher
        name = os.path.join(_OUT, f"rank-{os.environ['RANK']}-{os.getpid()}.json")
        with open(name, "w") as f:
            json.dump(_records, f)
