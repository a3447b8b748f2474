"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check runs end to end on CPU, so it is not dead code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke(ds_ops, tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ,
                          "PYTHON": sys.executable}, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["case"]: r for r in report["rows"]}
    assert set(rows) == {"sft", "zero3-nvme", "lora", "qlora", "fsdp", "plain"}
    assert rows["qlora"]["status"] == rows["fsdp"]["status"] == "skipped"  # CUDA only
    for case in ("sft", "zero3-nvme", "lora", "plain"):
        assert rows[case]["status"] == "ok" and rows[case]["tokens_per_s"] > 0 and rows[case]["step_s"] > 0, rows[case]
    assert rows["zero3-nvme"]["detail"].split()[0] != "0", rows["zero3-nvme"]  # DeepSpeed really swapped to disk
    assert 7e6 < report["parameters"] < 1e7 and report["hpcft_over_plain_step_time"] > 0
    assert "| sft | ok |" in proc.stdout and "hand-written Trainer" in proc.stdout
