"""The product card's headline on the lab: ZeRO-3 with NVMe offload on 2 nodes × 2 ranks, and the shared op cache.

``hpcft submit demo512/job.yaml --nodes 2 --zero 3 --offload nvme`` once ran out of memory here (16 swap
buffers of DeepSpeed's default 1e8 elements: 6.4 GB per rank). Checked against expectations from
outside hpcft: the MLP weights of the 8.3M-parameter demo (512 × 2048) give 4 ranks partitions of
262144 fp32 elements = 1 MiB, DeepSpeed's swap minimum, so they really go to disk; the ranks' peak
RSS (VmHWM) stays under 1.5× the planner's figure; the resumed losses equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from hpcft.node.ds_ops import ops_dir
from hpcft.ops.logs import rank_text
from tests.cluster.test_launchers import losses, run_demo
from tests.conftest import hpcft

pytestmark = pytest.mark.cluster

PEAK = re.compile(r"peak host memory of this rank: (\d+) MiB")


def test_headline_nvme_offload_on_two_nodes_swaps_fits_and_resumes_exactly(lab, ds_ops, demo512, tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    built = _built_files(ops_dir(tmp_path / "full", os.environ))
    assert {p.name for p in built} >= {"async_io.so", "deepspeed_shm_comm.so"}  # make ops / the ds_ops fixture
    args = ["--zero", "3", "--offload", "nvme", "-o", f"train.offload.nvme_path={nvme}", "-o", "train.max_steps=12",
            "-o", "train.save_steps=6", "-o", "train.eval_steps=null"]  # fmt: skip
    st, full = run_demo(demo512, tmp_path / "full", *args)
    assert st["step"] == 12
    zero = json.loads((full / "ds_config.json").read_text())["zero_optimization"]
    assert zero["offload_param"]["buffer_size"] == 262144 and zero["offload_param"]["buffer_count"] == 5
    swap = nvme / full.name / "zero_stage_3"
    for kind in ("float32params", "optimizer"):
        files = list(swap.glob(f"{kind}/rank*/*.swp"))
        assert {p.parent.name for p in files} == {"rank0", "rank1", "rank2", "rank3"}, kind
        assert all(p.stat().st_size > 0 for p in files)
    assert "building DeepSpeed ops" not in _job_output(full)  # built before the job (make ops), never at its start
    assert _built_files(ops_dir(tmp_path / "full", os.environ)) == built  # and no rank compiled them again
    peaks = [int(PEAK.search(rank_text(full, r)).group(1)) for r in range(4)]
    planned = _planned_mib(full, demo512 / "model")
    assert len(peaks) == 4 and max(peaks) <= 1.5 * planned and min(peaks) >= planned / 1.5, (peaks, planned)

    # The same run interrupted after its step-6 checkpoint: keep that, drop what came after, resume.
    run = tmp_path / "resumed" / full.name
    shutil.copytree(full, run, symlinks=True)
    shutil.rmtree(run / "checkpoints" / "checkpoint-12")
    for name in ("FINISHED", "metrics.jsonl"):
        (run / name).unlink()
    (run / "spec.yaml").write_text((run / "spec.yaml").read_text().replace(str(full.parent), str(run.parent)))
    out = hpcft("resume", str(run), "--wait", timeout=900).stdout
    assert "from checkpoint-6" in out
    assert losses(run) == losses(full)[6:]  # steps 7..12, bit for bit


def test_plan_refuses_an_offload_job_that_cannot_fit_the_node(demo512):
    proc = hpcft("plan", str(demo512 / "job.yaml"), "--backend", "sbatch", "--nodes", "2", "--zero", "3",
                 "--offload", "cpu", "-o", "resources.mem=1G", check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "resources.mem: 1G per node cannot hold 2 ranks" in proc.stderr


def test_first_job_builds_the_ops_once_on_one_node_and_later_jobs_reuse_them(lab, demo_dir, tmp_path):
    runs = tmp_path / "runs"
    env = {"TORCH_EXTENSIONS_DIR": "", "HPCFT_OPS_CACHE": ""}  # unset: the jobs use the runs directory's cache
    # One rank per node: the claim is about nodes (one builds, the other waits for its lock), not ranks.
    args = ["--zero", "3", "--gpus-per-node", "1", "-o", "train.max_steps=2", "-o", "train.save_steps=100",
            "-o", "train.eval_steps=null"]  # fmt: skip
    first = _submit(demo_dir, runs / "a", env, args)
    out = _job_output(first)
    assert out.count("building DeepSpeed ops shm_comm") == 1  # one node built; the other waited for its lock
    cache = runs / "a" / ".cache" / "torch_extensions"
    (key,) = [p.name for p in cache.iterdir()]
    assert (cache / key / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
    built = _built_files(cache / key)
    second = _submit(demo_dir, runs / "a", env, args)
    assert "building DeepSpeed ops" not in _job_output(second) and "waiting" not in _job_output(second)
    assert _built_files(cache / key) == built  # the ranks loaded the ops without compiling anything


def _submit(demo: Path, runs: Path, env: dict, args: list[str]) -> Path:
    before = set(runs.glob("*/spec.yaml"))
    proc = hpcft("submit", str(demo / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs), *args,
                 env=env, timeout=900, check=False)  # fmt: skip
    (spec,) = set(runs.glob("*/spec.yaml")) - before
    assert proc.returncode == 0, (proc.stdout, proc.stderr, _job_output(spec.parent))
    return spec.parent


def _built_files(directory: Path) -> dict[Path, int]:
    """The compiled files of the op cache (objects and libraries) with their modification times."""
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.suffix in (".o", ".so")}


def _job_output(run: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run / "logs").glob("slurm-*.out")))


def _planned_mib(run: Path, model: Path) -> int:
    from hpcft.plan import memory, offload

    numels = memory.parameter_numels(memory.read_model_config(model))
    zero = json.loads((run / "ds_config.json").read_text())["zero_optimization"]
    return offload.host_per_rank(numels, 4, "fp32", zero, cpu_compute=True).total // 2**20


def test_a_rank_slurm_kills_for_memory_is_named_and_not_retried(lab, demo_dir, tmp_path):
    # --mem 400M per node for two ranks of ~550 MiB each: the job's cgroup OOM killer ends the step.
    runs = tmp_path / "runs"
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs),
                 "-o", "resources.mem=400M", "-o", "run.max_failures=2", timeout=600, check=False)  # fmt: skip
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    state = json.loads((run / "state.json").read_text())
    (event,) = state["events"]  # one attempt: an OOM is not retried like a transient crash
    assert event["action"] == "fail" and "was killed by SLURM at its memory limit of 400 MB" in event["oom"]
    assert state.get("restarts", 0) == 0 and state.get("failures", 0) == 0
    out = _job_output(run)
    assert "hpcft: fail: out of memory: step" in out
    st = json.loads(hpcft("status", run.name, "--runs-dir", str(runs), "--json").stdout)
    assert st["state"] == "OUT_OF_MEMORY" and "memory limit of 400 MB" in st["reason"]
