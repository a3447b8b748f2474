"""The prepare job's sbatch command (hpcft.plan.prepare): sbatch's --wrap shell gives the argv back unchanged."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from hpcft.plan.prepare import PrepareOptions, after, prepare_argv


def test_wrap_survives_a_hostile_run_path(tmp_path):
    run = str(tmp_path / "runs/it's a $(touch x) `run`; ok")
    argv = prepare_argv(run, "sft", "/opt/py 3/bin/python", PrepareOptions(partition="cpu", cpus=16, mem="32G"))
    assert argv[:2] == ("sbatch", "--parsable") and "--partition=cpu" in argv and "--cpus-per-task=16" in argv
    assert "--mem=32G" in argv and f"--chdir={run}" in argv and f"--output={run}/logs/prepare-%j.out" in argv
    wrap = next(a for a in argv if a.startswith("--wrap=")).removeprefix("--wrap=")
    assert shlex.split(wrap) == ["/opt/py 3/bin/python", "-m", "hpcft.train.prepare", run]
    # What sbatch does with --wrap: a /bin/sh script holding the line. Printing instead of running it:
    echoed = subprocess.run(["sh", "-c", f"set -- {wrap}; printf '%s\\n' \"$@\""], capture_output=True, text=True,
                            cwd=tmp_path).stdout.splitlines()  # fmt: skip
    assert echoed == ["/opt/py 3/bin/python", "-m", "hpcft.train.prepare", run]
    assert not (tmp_path / "x").exists()


def test_training_waits_for_the_prepare_job():
    assert after(("sbatch", "--parsable", "/r/job.sbatch"), "41") == (
        "sbatch", "--dependency=afterok:41", "--kill-on-invalid-dep=yes", "--parsable", "/r/job.sbatch")  # fmt: skip
    with pytest.raises(ValueError):
        after(("python", "-m", "hpcft.backends.local"), "41")
