"""A runs directory shared by a team: a run another user cannot read is one row saying so, never a traceback
that hides the other runs (issue #25, item 17).

The tests run as root here, where chmod stops no read: the permission problem is simulated at the
operating-system calls pathlib and ``open`` make (EACCES, as the kernel answers another user's 0700
directory or 0600 file).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import fuzzing as F


def deny(monkeypatch, denied: Callable[[str], bool], *, listing_too: bool) -> None:
    """Make opening (and, with ``listing_too``, stat and listing) every path ``denied`` accepts fail with EACCES."""

    def guard(real, *, passthrough=False):
        def call(path, *args, **kwargs):
            if not isinstance(path, int) and denied(os.fspath(path)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    if listing_too:
        for name in ("stat", "lstat", "listdir", "scandir"):
            monkeypatch.setattr(os, name, guard(getattr(os, name)))


@pytest.fixture
def shared(tmp_path) -> tuple[Path, Path, Path]:
    """(runs dir, a run of another user, a healthy run beside it)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    theirs = F.make_run(F.make_workdir(tmp_path / "a"), "theirs")
    mine = F.make_run(F.make_workdir(tmp_path / "b"), "mine")
    for run in (theirs, mine):
        run.rename(runs / run.name)
    return runs, runs / theirs.name, runs / mine.name


def _listings(tmp_path: Path, runs: Path) -> dict[str, F.Outcome]:
    env = {"PATH": str(F.fake_slurm(tmp_path))}
    return {" ".join(c): F.invoke([*c, "--runs-dir", str(runs)], env=env) for c in (["list"], ["status"],
            ["status", "--json"])}  # fmt: skip


@pytest.mark.parametrize("case", ["a run directory of mode 0700", "a state.json of mode 0600"])
def test_a_run_another_user_cannot_read_is_one_row_and_the_others_show(tmp_path, monkeypatch, shared, case):
    runs, theirs, mine = shared
    F.fake_slurm(tmp_path)  # made before the denial starts
    if case.startswith("a run directory"):
        deny(monkeypatch, lambda p: p.startswith(f"{theirs}/"), listing_too=True)
    else:
        deny(monkeypatch, lambda p: p == str(theirs / "state.json"), listing_too=False)
    outs = _listings(tmp_path, runs)
    for out in outs.values():
        F.assert_clean(out)
        assert out.exit_code == 0, out.output
        assert mine.name in out.output and theirs.name in out.output, out.output
        assert "UNREADABLE" in out.output, out.output
    rows = {r["run"]: r for r in json.loads(outs["status --json"].output)}
    assert rows[theirs.name]["state"] == "UNREADABLE"
    assert rows[theirs.name]["reason"] == "permission denied: state.json"  # the first file status reads
    assert rows[mine.name]["state"] not in ("UNREADABLE", "DAMAGED")
    assert rows[mine.name]["checkpoint"] == "checkpoint-2"


@pytest.mark.parametrize("ref", ["name", "path", "prefix"])
def test_status_of_the_unreadable_run_alone_is_one_error_with_a_hint(tmp_path, monkeypatch, shared, ref):
    runs, theirs, _ = shared
    F.fake_slurm(tmp_path)
    deny(monkeypatch, lambda p: p.startswith(f"{theirs}/"), listing_too=True)
    arg = {"name": theirs.name, "path": str(theirs), "prefix": "their"}[ref]
    for command in (["status", arg], ["status", arg, "--json"], ["status", arg, "--watch"]):
        out = F.invoke([*command, "--runs-dir", str(runs)], env={"PATH": str(F.fake_slurm(tmp_path))})
        F.assert_clean(out)
        assert out.exit_code == 1, out.output
        error, hint = out.output.strip().splitlines()
        assert error == f"error: {theirs.name}: permission denied: state.json"
        assert hint.startswith("HINT: ask the run's owner") and "check the permissions" in hint


def test_watching_a_runs_dir_with_an_unreadable_run_ends(tmp_path, monkeypatch, shared):
    from hpcft.rundir import store

    runs, theirs, mine = shared
    F.fake_slurm(tmp_path)
    store.write_state(mine, {**store.read_state(mine), "jobs": []})  # not submitted: ended
    deny(monkeypatch, lambda p: p.startswith(f"{theirs}/"), listing_too=True)
    out = F.invoke(["status", "--watch", "--runs-dir", str(runs)], env={"PATH": str(F.fake_slurm(tmp_path))})
    F.assert_clean(out)
    assert out.exit_code == 0 and "UNREADABLE" in out.output and mine.name in out.output, out.output


def test_a_runs_directory_closed_to_this_user_is_one_error(tmp_path, monkeypatch, shared):
    runs, _, _ = shared
    F.fake_slurm(tmp_path)
    deny(monkeypatch, lambda p: p == str(runs), listing_too=True)
    for command in (["list"], ["status"], ["status", "--json"]):
        out = F.invoke([*command, "--runs-dir", str(runs)], env={"PATH": str(F.fake_slurm(tmp_path))})
        F.assert_clean(out)
        assert out.exit_code == 1, out.output
        assert out.output.strip().splitlines() == [
            f"error: permission denied: {runs}",
            "HINT: check the permissions of the runs directory (`ls -ld`), or give another one with --runs-dir",
        ]
