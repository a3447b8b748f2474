"""The user's own trainer on the 2-node lab: modules, programs, self-launching tools, placeholders.

Each probe is a real distributed program: it joins the world torch.distributed (or accelerate) forms,
all-reduces a one from every rank, and writes what it saw to ``OUT/rank-N.json``. The independent
expectation is the allocation itself: 2 nodes × 2 processes = one world of 4 whose sum is 4.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import hpcft

pytestmark = pytest.mark.cluster

PROBE = """
import json, os, sys
import torch
import torch.distributed as dist

def main():
    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    out = sys.argv[1]
    record = {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": float(t), "argv": sys.argv[2:],
              "node_rank": os.environ.get("NODE_RANK"), "env_ds": os.environ.get("HPCFT_DS_CONFIG")}
    with open(os.path.join(out, f"rank-{dist.get_rank()}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
"""

# What LLaMA-Factory's launcher does with FORCE_TORCHRUN=1 (llamafactory/cli.py): start torchrun itself
# from the rendezvous variables, once per node.
SELF_LAUNCHING = """
import os, subprocess, sys
assert os.environ["FORCE_TORCHRUN"] == "1"
argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", os.environ["NNODES"],
        "--node_rank", os.environ["NODE_RANK"], "--nproc_per_node", os.environ["NPROC_PER_NODE"],
        "--master_addr", os.environ["MASTER_ADDR"], "--master_port", os.environ["MASTER_PORT"], *sys.argv[1:]]
sys.exit(subprocess.call(argv))
"""

# An accelerate script that does not force CPU: it must still see one world of 4 on GPU-less nodes.
ACCELERATE = """
import json, os, sys
import torch
from accelerate import Accelerator

acc = Accelerator()
total = acc.reduce(torch.ones(1, device=acc.device), reduction="sum")
record = {"rank": acc.process_index, "world": acc.num_processes, "sum": float(total),
          "type": str(acc.distributed_type)}
with open(os.path.join(sys.argv[1], f"rank-{acc.process_index}.json"), "w") as f:
    json.dump(record, f)
acc.end_training()
"""


@pytest.fixture
def probes(tmp_path) -> Path:
    pkg = tmp_path / "probes"
    (pkg / "userpkg").mkdir(parents=True)
    (pkg / "userpkg" / "__init__.py").write_text("")
    for name, text in (("userpkg/probe.py", PROBE), ("probe.py", PROBE), ("selflaunch.py", SELF_LAUNCHING),
                       ("acc_probe.py", ACCELERATE)):  # fmt: skip
        (pkg / name).write_text(textwrap.dedent(text))
    (pkg / "out").mkdir()
    return pkg


def submit(demo_dir: Path, runs_dir: Path, *args: str) -> Path:
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs_dir), *args,
                 check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    output = "\n".join(p.read_text(errors="replace") for p in sorted((run / "logs").glob("slurm-*.out")))
    assert proc.returncode == 0, (proc.stdout, proc.stderr, output)
    return run


def seen(out: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [r["rank"] for r in records] == [0, 1, 2, 3], records
    assert all(r["world"] == 4 and r["sum"] == 4.0 for r in records), records
    return records


def test_a_module_runs_as_python_m_on_every_rank(lab, demo_dir, runs_dir, probes):
    out = probes / "out"
    submit(demo_dir, runs_dir, "-o", f"launch.env={{PYTHONPATH: {probes}}}", "--", "-m", "userpkg.probe", str(out),
           "--tag", "{node_rank}/{nnodes}")  # fmt: skip
    records = seen(out)
    assert sorted(r["argv"][1] for r in records) == ["0/2", "0/2", "1/2", "1/2"]  # filled in on each node


def test_a_program_on_the_path_runs_under_torchrun(lab, demo_dir, runs_dir, probes):
    # A console command of the job's environment (like `trl`): found on the PATH hpcft gives the ranks.
    bindir = probes / "bin"
    bindir.mkdir()
    program = bindir / "my-trainer"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} {probes / "probe.py"} "$@"\n')
    program.chmod(0o755)
    out = probes / "out"
    submit(demo_dir, runs_dir, "--zero", "2", "-o", f'launch.setup=["export PATH={bindir}:$PATH"]', "--",
           "my-trainer", str(out), "--deepspeed", "{ds_config}")  # fmt: skip
    records = seen(out)
    ds_config = records[0]["argv"][1]
    assert ds_config.endswith("/ds_config.json") and records[0]["env_ds"] == ds_config
    assert json.loads(Path(ds_config).read_text())["zero_optimization"]["stage"] == 2


def test_launcher_none_runs_a_self_launching_tool_once_per_node(lab, demo_dir, runs_dir, probes):
    out = probes / "out"
    run = submit(demo_dir, runs_dir, "--launcher", "none", "--", str(probes / "selflaunch.py"),
                 str(probes / "probe.py"), str(out))  # fmt: skip
    records = seen(out)
    assert sorted(r["node_rank"] for r in records) == ["0", "0", "1", "1"]
    output = next((run / "logs").glob("slurm-*.out")).read_text(errors="replace")
    started = [line for line in output.splitlines() if line.startswith("hpcft node ") and "selflaunch.py" in line]
    assert len(started) == 2  # hpcft node on each node started the command, nothing else
    assert output.count("hpcft: rank 0 runs") == 1  # said once, by node 0's command (rank_exec)


def test_an_accelerate_script_that_does_not_force_cpu_forms_one_world(lab, demo_dir, runs_dir, probes):
    out = probes / "out"
    submit(demo_dir, runs_dir, "--launcher", "accelerate", "--", str(probes / "acc_probe.py"), str(out))
    assert {r["type"] for r in seen(out)} == {"DistributedType.MULTI_CPU"}


def test_an_unknown_program_fails_on_the_node_with_its_name(lab, demo_dir, runs_dir):
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs_dir), "--",
                 "no-such-trainer", "--x", check=False)  # fmt: skip
    assert proc.returncode != 0
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    output = next((run / "logs").glob("slurm-*.out")).read_text(errors="replace")
    assert "launch.command: 'no-such-trainer' is not on PATH here" in output
    assert "not requeued" in output  # preflight: a rerun would fail the same way
