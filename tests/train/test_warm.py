"""Warm ranks (``hpcft.train.warm``): the stack imported once per node, every rank a fork of that server.

Independent expectations: a cold run of the same job (``launch.warm_start=false``, plain torchrun) gives
the same losses bit for bit; the server's environment starts no thread when the stack is imported
(counted in /proc, in a fresh interpreter that imports what the server imports).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hpcft

pytestmark = pytest.mark.train


def _run(demo: Path, runs: Path, warm: bool) -> Path:
    short = ["-o", "train.max_steps=10", "-o", "train.eval_steps=null"]
    hpcft("submit", str(demo / "job.yaml"), "--backend", "local", "--wait", "--runs-dir", str(runs), *short,
          "-o", f"launch.warm_start={str(warm).lower()}")  # fmt: skip
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    return run


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_warm_ranks_are_forks_of_one_preloaded_server_and_train_as_cold_ones(demo_dir, tmp_path):
    warm, cold = _run(demo_dir, tmp_path / "warm", True), _run(demo_dir, tmp_path / "cold", False)
    out = (warm / "logs" / "local.out").read_text()
    assert "hpcft.train.warm" in out and "ranks are forks of this agent" in out  # the node's one import
    assert "hpcft.train.warm" not in (cold / "logs" / "local.out").read_text()
    (begin,) = [r for r in _records(warm) if r.get("event") == "train_begin"]
    assert begin["startup"]["warm"] is True  # the rank found transformers.trainer imported at its fork
    (cold_begin,) = [r for r in _records(cold) if r.get("event") == "train_begin"]
    assert cold_begin["startup"]["warm"] is False
    for profile in (begin["startup"], cold_begin["startup"]):
        stages = [profile[s] for s in ("imports", "process_group", "data", "model", "train_begin")]
        assert stages == sorted(stages) and stages[0] >= 0  # reached in this order after the process started
    assert [r["loss"] for r in _records(warm) if "loss" in r] == [r["loss"] for r in _records(cold) if "loss" in r]
    out = hpcft("status", str(warm)).stdout
    assert "start-up (warm rank 0, seconds from its process start): imports" in out


def test_the_servers_environment_starts_no_thread_when_it_imports_the_stack(tmp_path):
    # What the forkserver does before it forks: set SERVER_ENV (and torchrun's OMP_NUM_THREADS), import (a ZeRO
    # job with LoRA preloads deepspeed and peft too).
    code = (
        "import importlib, os\n"
        "from hpcft.train import warm\n"
        "os.environ.update(warm.SERVER_ENV)\n"  # too late for libraries already loaded: the env below sets it
        "for m in [*warm.preload_modules('/nonexistent'), 'deepspeed', 'peft']: importlib.import_module(m)\n"
        "print(warm.threads_after_preload())\n"
    )
    from hpcft.train.warm import SERVER_ENV

    env = {k: v for k, v in __import__("os").environ.items() if k not in SERVER_ENV}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **SERVER_ENV}, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == "1"
    # Without it numpy's BLAS pool and pyarrow's jemalloc thread would be running at the fork.
    proc = subprocess.run([sys.executable, "-c", code.replace("os.environ.update(warm.SERVER_ENV)\n", "")], env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert int(proc.stdout.strip().splitlines()[-1]) > 1
