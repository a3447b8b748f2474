"""A job whose derived rendezvous port is taken on its node still starts: the master picks a free one.

On a real cluster two jobs on one node collide when their ids agree modulo 10000 (12345 and 22345: port
17345). SLURM 22.05's sbatch has no ``--jobid`` to make that collision, so the lab makes the same event
another way: job B is submitted held, and job A, running on the same node, holds B's derived port (as
A's rendezvous store would) when B is released. B must finish on a fallback port every rank agrees on.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster

HOLDER = """
import socket, sys, time
s = socket.socket()
s.bind(("", int(sys.argv[1])))
s.listen()
open(sys.argv[2], "w").write("listening")
time.sleep(float(sys.argv[3]))
"""

TRAINER = """
import os, sys
import torch.distributed as dist
dist.init_process_group("gloo")
with open(os.path.join(sys.argv[1], f"rank-{dist.get_rank()}.port"), "w") as f:
    f.write(os.environ["MASTER_PORT"])
dist.barrier()
dist.destroy_process_group()
"""


def submit(tmp_path: Path, runs: Path, name: str, resources: dict, *command: str, launcher: str = "torchrun") -> str:
    job = tmp_path / f"{name}.yaml"
    job.write_text(json.dumps({"run": {"name": name, "max_failures": 0}, "resources": resources,
                               "launch": {"launcher": launcher}}))  # fmt: skip
    out = hpcft("submit", str(job), "--runs-dir", str(runs), "--backend", "sbatch", "--", *command).stdout
    return out.split(" as job ")[1].split()[0]


def test_a_taken_rendezvous_port_on_the_master_falls_back_and_the_job_finishes(lab, tmp_path):
    for name, text in (("holder.py", HOLDER), ("trainer.py", TRAINER)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    out, runs = tmp_path / "out", tmp_path / "runs"
    out.mkdir()
    node1 = {"nodes": 1, "mem": "2G", "extra_sbatch": ["--nodelist=node1"]}
    b = submit(tmp_path, runs, "b", {**node1, "gpus_per_node": 2, "extra_sbatch": ["--nodelist=node1", "--hold"]},
               str(tmp_path / "trainer.py"), str(out))  # fmt: skip
    derived = 15_000 + int(b) % 10_000
    listening = tmp_path / "listening"
    submit(tmp_path, runs, "a", {**node1, "gpus_per_node": 0}, str(tmp_path / "holder.py"), str(derived),
           str(listening), "60", launcher="none")  # fmt: skip
    try:
        wait_until("job a to hold the port on node1", listening.exists, timeout=120)
        subprocess.run(["scontrol", "release", b], check=True)
        wait_until("job b to end", lambda: _state(runs, "b") in ("COMPLETED", "FAILED"), timeout=180, interval=2)
    finally:
        for name in ("a", "b"):
            hpcft("cancel", name, "--runs-dir", str(runs), check=False)
    logs = "\n".join(p.read_text(errors="replace") for p in runs.rglob("slurm-*.out"))
    assert _state(runs, "b") == "COMPLETED", logs
    ports = {p.read_text() for p in out.glob("rank-*.port")}
    assert len(list(out.glob("rank-*.port"))) == 2 and len(ports) == 1, ports  # every rank agreed
    assert ports != {str(derived)}, "job b used the port job a holds"


def _state(runs: Path, name: str) -> str:
    rows = json.loads(hpcft("status", "--runs-dir", str(runs), "--json").stdout)
    return next((r["state"] for r in rows if r["run"].startswith(f"{name}-")), "")
