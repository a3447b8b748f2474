"""Cluster tier: real submissions to the 2-node SLURM lab (scripts/dev-cluster up)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hpcft.ops.logs import rank_text
from tests.conftest import hpcft

pytestmark = pytest.mark.cluster


def status(run: str, runs_dir: Path) -> dict:
    return json.loads(hpcft("status", run, "--runs-dir", str(runs_dir), "--json").stdout)


def only_run(runs_dir: Path) -> Path:
    runs = [p for p in runs_dir.rglob("spec.yaml")]
    assert len(runs) == 1, runs
    return runs[0].parent


def wait_state(run: str, runs_dir: Path, states: set[str], timeout: float = 120) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        st = status(run, runs_dir)
        if st["state"] in states:
            return st
        time.sleep(1)
    raise AssertionError(f"{run} never reached {states}: {st}")


def test_two_node_demo_trains_in_one_rendezvous(lab, demo_dir, runs_dir):
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs_dir))
    run = only_run(runs_dir)
    st = status(run.name, runs_dir)
    assert st["state"] == "COMPLETED", proc.stdout + proc.stderr
    assert st["step"] == st["total_steps"] == 20
    assert st["nodes"] == "2" and st["job_id"].isdigit()
    assert st["checkpoint"] == "checkpoint-20"
    assert (run / "checkpoints" / "checkpoint-20" / "model.safetensors").is_file()
    begin = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train_begin"' in x]
    assert begin[0]["world_size"] == 4 and begin[0]["job_id"] == st["job_id"]
    out = (run / "logs" / f"slurm-{st['job_id']}.out").read_text()
    assert "hpcft node node1:" in out and "hpcft node node2:" in out  # one agent per node
    # one log per node, not per rank; each rank's lines are in its node's file
    assert sorted(p.name for p in (run / "logs").glob("node-*.log")) == ["node-node1.log", "node-node2.log"]
    assert all(f"rank {i} of 4 on node" in rank_text(run, i) for i in range(4))
    assert "rank 3 of 4 on" in hpcft("logs", run.name, "--rank", "3", "--runs-dir", str(runs_dir)).stdout
    logs = hpcft("logs", run.name, "--runs-dir", str(runs_dir)).stdout
    assert "finished at step 20" in logs


SLEEPER = """\
import os, time
open(os.path.join(os.environ["HPCFT_RUN_DIR"], f"started-{os.environ['RANK']}"), "w").close()
time.sleep(600)
"""


def test_cancel_stops_every_process(lab, runs_dir, tmp_path):
    script = tmp_path / "sleeper_cancel_probe.py"
    script.write_text(SLEEPER)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"resources": {"nodes": 2, "gpus_per_node": 1}}))
    hpcft("submit", str(job), "--runs-dir", str(runs_dir), "--", str(script))
    run = only_run(runs_dir)
    end = time.time() + 120
    while len(list(run.glob("started-*"))) < 2 and time.time() < end:
        time.sleep(0.5)
    assert len(list(run.glob("started-*"))) == 2, "workers never started"
    assert status(run.name, runs_dir)["state"] == "RUNNING"
    hpcft("cancel", run.name, "--runs-dir", str(runs_dir))
    wait_state(run.name, runs_dir, {"CANCELLED"}, timeout=60)
    end = time.time() + 30
    while subprocess.run(["pgrep", "-f", script.name], capture_output=True).returncode == 0 and time.time() < end:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", script.name], capture_output=True).returncode == 1, "workers survived"


def test_bad_input_submits_nothing(lab, demo_dir, runs_dir, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"resources": {"nodes": 0, "time": "later"}}))
    proc = hpcft("submit", str(bad), "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "resources.nodes: must be at least 1, got 0" in proc.stderr
    assert "resources.time: expected sbatch time" in proc.stderr
    # sbatch itself refuses (no such partition): clear error, run directory removed again.
    proc = hpcft(
        "submit", str(demo_dir / "job.yaml"), "--partition", "nosuch", "--runs-dir", str(runs_dir), check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "invalid partition" in proc.stderr.lower() and "exit code" in proc.stderr
    assert list(runs_dir.iterdir()) == []
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert before == after


PROBE = """\
import json, os, sys
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "NNODES", "MASTER_ADDR", "HPCFT_RUN_DIR"]
record = {k: os.environ.get(k) for k in keys} | {"argv": sys.argv[1:], "cwd": os.getcwd()}
with open(os.path.join(os.environ["HPCFT_RUN_DIR"], f"probe-{os.environ['RANK']}.json"), "w") as f:
    json.dump(record, f)
"""


def test_hostile_names_and_paths_through_real_sbatch(lab, tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"a b $(touch {marker}1) `touch {marker}2` ; 'q' \"dq\" #h %x 50%"
    runs_dir = tmp_path / f"runs {hostile}"
    script = tmp_path / "my probe.py"
    script.write_text(PROBE)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"run": {"name": hostile}, "resources": {"nodes": 2, "gpus_per_node": 2}}))
    args = ["x y", f"$(touch {marker}3)", "`id`", "'; echo hi"]
    hpcft("submit", str(job), "--wait", "--runs-dir", str(runs_dir), "--", str(script), *args)
    run = only_run(runs_dir)
    assert run.name.startswith(hostile.replace("/", "_"))
    probes = [json.loads(p.read_text()) for p in sorted(run.glob("probe-*.json"))]
    assert sorted(int(p["RANK"]) for p in probes) == [0, 1, 2, 3]
    assert {p["WORLD_SIZE"] for p in probes} == {"4"}
    assert {p["NODE_RANK"] for p in probes} == {"0", "1"}
    assert all(p["argv"] == args and p["HPCFT_RUN_DIR"] == str(run) for p in probes)
    assert not list(tmp_path.glob("pwned*")), "a name or argument was executed by a shell"
    assert list((run / "logs").glob("slurm-*.out")), "SLURM wrote the job output elsewhere"


# Where the rank stands: the CPUs it may run on, written to OUT/rank-RANK.
AFFINITY = """
import os, sys
with open(os.path.join(sys.argv[1], "rank-" + os.environ["RANK"]), "w") as f:
    f.write(" ".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))))
"""


def test_each_rank_holds_the_cpus_per_task_it_asked_for_where_cores_are_constrained(lab, demo_dir, runs_dir, tmp_path):
    # Issue #25 item 12. The lab runs ConstrainCores=yes (scripts/lab/up.sh): a step's tasks get only the job's
    # CPUs on their node. Its nodes claim 8 CPUs each, which SLURM maps onto this machine's cores, so a rank
    # holds min(asked, cores): 1 CPU shows the constraint is in force, all of them that the ranks got what
    # resources.cpus_per_task asked. Steps are exclusive here (SLURM_EXACT, as some sites make them): a step's
    # task then gets only the CPUs srun was asked for, and srun no longer inherits --cpus-per-task (SLURM 22.05).
    probe = tmp_path / "affinity.py"
    probe.write_text(AFFINITY)
    cores = os.cpu_count()
    assert cores and cores >= 2, "this drill needs a machine with 2 cores or more"
    outs = {}
    for name, asked, backend in (("one", 1, "sbatch"), ("all", cores, "sbatch"), ("submitit", cores, "submitit")):
        outs[name] = (asked, tmp_path / f"cpus-{name}")
        outs[name][1].mkdir()
        hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--runs-dir", str(runs_dir / name),
              "--backend", backend, "-o", f"resources.cpus_per_task={asked}", "-o", "resources.gpus_per_node=1",
              "--", str(probe), str(outs[name][1]), env={"SLURM_EXACT": "1"})  # fmt: skip
    for name in outs:
        (run,) = [p.parent for p in (runs_dir / name).glob("*/spec.yaml")]
        hpcft("wait", run.name, "--runs-dir", str(run.parent))
    for name, (asked, out) in outs.items():
        held = {p.name: p.read_text().split() for p in out.glob("rank-*")}
        assert sorted(held) == ["rank-0", "rank-1"], (name, held)
        assert all(len(cpus) == asked for cpus in held.values()), (name, asked, held)
