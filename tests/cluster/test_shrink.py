"""Cluster tier: a node dies under a running job, and the run continues on the node it has left.

The event is a real node failure: every process of the cluster's second node ("node2" below: its slurmd,
the job's step daemon and ranks, its sshd) is killed, as when a machine loses power; SLURM declares it DOWN
after SlurmdTimeout (read from slurmctld: 30 s on the lab). With ``resources.min_nodes=1`` and
``run.shrink_after`` the job was submitted with ``--no-kill``, so SLURM keeps it on node1; its after-job
waits ``shrink_after`` for node2 and, with node2 still down, runs the batch script again on node1.
begin-job rewrites spec.yaml for 1 node with the global batch kept; the rank converts the 2-rank ZeRO-2
checkpoint to DeepSpeed's universal format and the run finishes from its last checkpoint, in the same job.
Node2 is brought back afterwards.

Expectation: the losses of an uninterrupted 2-node run (tolerance as in test_resize: the same samples per
step, summed by all-reduce or by accumulation), and SLURM's own record of one job on node[1-2].
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import ZERO2_REFERENCE_ARGS
from tests.cluster.lab_nodes import crash_node, restore_node, slurmd_timeout
from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster

ARGS = ZERO2_REFERENCE_ARGS  # the shared reference run's arguments (tests/cluster/conftest.py)


def ended(run: Path) -> dict | None:
    status = json.loads(hpcft("status", str(run), "--json").stdout)
    return status if status["state"] not in ("PENDING", "RUNNING", "COMPLETING") else None


def complete(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").is_file()


def losses(run: Path) -> dict[int, float]:
    """Step → loss; a step trained again after the resume (lost with the node) counts as its last record."""
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def submit(demo_dir: Path, runs: Path, *extra: str) -> Path:
    hpcft("submit", str(demo_dir / "job.yaml"), *ARGS, *extra, "--runs-dir", str(runs), timeout=120)
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    return run


def test_a_run_that_loses_a_node_continues_on_the_nodes_left(lab, ds_ops, demo_dir, tmp_path, zero2_reference):
    reference = zero2_reference
    run = submit(demo_dir, tmp_path / "runs", "-o", "resources.min_nodes=1", "-o", "run.shrink_after=20")
    job = json.loads((run / "state.json").read_text())["jobs"][0]["id"]
    assert "#SBATCH --no-kill" in (run / "job.sbatch").read_text()
    wait_until("checkpoint-10", lambda: complete(run, 10), timeout=600)
    assert not (run / "FINISHED").exists(), "the run ended before the node could fail"
    crashed = time.monotonic()
    first, second = lab.nodes  # the module's cluster (tests/conftest.py: LAB_MODULES)
    crash_node(second)
    try:
        status = wait_until(f"the run to end on {first}", lambda: ended(run), timeout=600, interval=2)
    finally:
        restore_node(second)
    assert time.monotonic() - crashed > slurmd_timeout()  # SLURM declared the node DOWN before anything moved

    out = hpcft("logs", str(run)).stdout
    assert f"lost {second} (1 node(s) left); waiting up to 20 s" in out, out
    assert f"shrink: {second} lost (the launcher exited with 137) and not back after 20 s" in out, out
    assert "spec.yaml now says 1 node(s): 2 → 1 ranks: train.grad_accum 1 → 2 keeps the global batch" in out, out
    state = json.loads((run / "state.json").read_text())
    (event,) = [e for e in state["events"] if e.get("kind") == "node loss"]
    assert (event["job"], event["action"], event["nodes_left"]) == (job, "shrink", first)
    assert [j["id"] for j in state["jobs"]] == [job] and state["failures"] == 1
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    assert (spec["resources"]["nodes"], spec["train"]["grad_accum"]) == (1, 2)
    assert (status["state"], status["nodelist"], status["restarts"]) == ("COMPLETED", first, 0), status
    lemon = hpcft("nodes", "--runs-dir", str(run.parent)).stdout  # the lost node is remembered (#26 item 6)
    assert lemon.startswith(f"{second}: LEMON (weight 1.00); last: node lost by job {job} in {run.name}"), lemon

    begins = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x]
    assert [(b["world_size"], b["start_step"]) for b in begins] == [(2, 0), (1, 10)]
    assert (run / "checkpoints" / "checkpoint-10" / "latest_universal").is_file()
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,NodeList"], capture_output=True,
                           text=True).stdout.split()  # fmt: skip
    assert sacct == [f"{job}|RESIZING|{lab.nodelist}", f"{job}|COMPLETED|{first}"], sacct  # SLURM's own record of it
    got, want = losses(run), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, 31))
    assert [got[s] for s in want] == pytest.approx(list(want.values()), abs=1e-5)
