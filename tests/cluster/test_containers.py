"""Cluster tier: `launch.container` on the lab, through stand-in runtimes (no apptainer or pyxis exists here).

The stand-ins are programs on PATH that record their arguments and run the command on the host: `apptainer`
(checks `exec`, its options and that the image file exists), and an `srun` in front of SLURM's that takes
pyxis' `--container-*` options off and runs the real srun. What they prove: the rendered commands reach the
runtime as intended on every node, and the rendezvous and the run directory work through them. What they
cannot: a real image's filesystem and GPU passthrough.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys

import pytest

from tests.cluster.test_launchers import run_demo

pytestmark = pytest.mark.cluster

APPTAINER = """#!/bin/sh
printf '%s %s\\n' "$(hostname)" "$*" >> {log}
[ "$1" = exec ] || exit 64
shift
while [ $# -gt 0 ]; do case "$1" in --nv) shift ;; --bind) shift 2 ;; *) break ;; esac; done
[ -f "$1" ] || {{ echo "stand-in apptainer: no image $1" >&2; exit 65; }}
shift
exec "$@"
"""

SRUN = """#!/bin/sh
for a in "$@"; do case "$a" in --container-*) printf '%s %s\\n' "$(hostname)" "$a" >> {log} ;; esac; done
for a in "$@"; do shift; case "$a" in --container-*) ;; *) set -- "$@" "$a" ;; esac; done
exec {real} "$@"
"""


def stand_in(bin_dir, name: str, text: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def begins(run) -> dict:
    return next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x)


def test_apptainer_wraps_every_nodes_agent(lab, demo_dir, runs_dir, tmp_path, monkeypatch):
    log, image = tmp_path / "apptainer.log", tmp_path / "train.sif"
    image.write_text("a stand-in image\n")
    stand_in(tmp_path / "bin", "apptainer", APPTAINER.format(log=log))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    st, run = run_demo(demo_dir, runs_dir, "-o", "launch.container.runtime=apptainer", "-o",
                       f"launch.container.image={image}", "-o", f"launch.container.mounts=[{demo_dir}]", "-o",
                       f"launch.container.python={sys.executable}", "-o", "train.max_steps=4")  # fmt: skip
    assert st["step"] == 4 and begins(run)["world_size"] == 4
    calls = log.read_text().splitlines()
    assert sorted(c.split()[0] for c in calls) == ["node1", "node2"]  # once per node
    binds = f"{runs_dir}:{runs_dir},{demo_dir}:{demo_dir}"
    for call in calls:
        assert call.split(" ", 1)[1] == f"exec --nv --bind {binds} {image} {sys.executable} -m hpcft node {run}"


def test_pyxis_options_reach_srun(lab, demo_dir, runs_dir, tmp_path, monkeypatch):
    log = tmp_path / "pyxis.log"
    stand_in(tmp_path / "bin", "srun", SRUN.format(log=log, real=shutil.which("srun")))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    image = "nvcr.io#nvidia/pytorch:24.05-py3"
    st, run = run_demo(demo_dir, runs_dir, "--launcher", "srun", "-o", "launch.container.runtime=pyxis", "-o",
                       f"launch.container.image={image}", "-o", f"launch.container.python={sys.executable}",
                       "-o", "train.max_steps=4")  # fmt: skip
    assert st["step"] == 4 and begins(run)["world_size"] == 4
    options = [f"node1 --container-image={image}", f"node1 --container-mounts={runs_dir}:{runs_dir}",
               f"node1 --container-workdir={run}"]  # fmt: skip
    # the watchers' step (hpcft node-watch) and the ranks', started one after the other: their lines may interleave
    assert sorted(log.read_text().splitlines()) == sorted(options * 2)
