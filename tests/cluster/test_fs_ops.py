"""What each rank does to the shared filesystem per training step, counted in the ranks of a lab run.

An audit harness (tests/cluster/fsaudit/sitecustomize.py, on the ranks' PYTHONPATH) records every file
system event Python raises and every stat under the runs directory, with its time, in every rank. The
steps are the ones rank 0 logged in metrics.jsonl; what falls between the third and the last logged
step is per-step work (the first steps are warm-up: libraries import lazily there, and
``importlib.metadata`` lists the ranks' working directory, the run directory, once). The rule (issue #17):
per step, hpcft's own code touches the shared filesystem from at most one process per job or node — here
global rank 0 — and from no other rank at all.
The measured figures are printed for benchmarks/RESULTS.md ("shared-FS operations per step per 1,000
ranks", extrapolated from the lab's 4 ranks).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, hpcft

pytestmark = pytest.mark.cluster

AUDIT = REPO / "tests" / "cluster" / "fsaudit"


@pytest.mark.parametrize(
    "flags", [[], ["--zero", "2", "--launcher", "deepspeed"]], ids=["torchrun-ddp", "deepspeed-zero2"]
)
def test_only_global_rank_0_touches_the_shared_filesystem_per_step(lab, demo_dir, runs_dir, tmp_path, flags):
    out = tmp_path / "audit"
    out.mkdir()
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--wait", "--runs-dir", str(runs_dir),
                 "-o", "train.max_steps=16", "-o", "train.save_steps=100", "-o", "train.eval_steps=100",
                 "-o", f"launch.env={{PYTHONPATH: {AUDIT}, HPCFT_FSAUDIT_OUT: {out}}}", *flags,
                 check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [m["time"] for m in steps if "loss" in m]
    assert len(times) >= 12
    begin, end, n_steps = times[2], times[-1], len(times) - 3
    per_rank: dict[int, collections.Counter] = {}
    for f in out.glob("rank-*.json"):
        rank = int(f.name.split("-")[1])
        ops = [(event, Path(p).name, who) for t, event, p, who in json.loads(f.read_text()) if begin < t <= end]
        per_rank[rank] = collections.Counter(ops)
    assert sorted(per_rank) == [0, 1, 2, 3], sorted(per_rank)
    for rank in (1, 2, 3):
        assert not per_rank[rank], f"rank {rank} touched the shared filesystem during training: {per_rank[rank]}"
    rank0 = sum(per_rank[0].values()) / n_steps
    assert rank0 <= 3, f"global rank 0 per step: {per_rank[0]}"
    print(
        f"\nshared-FS ops per step: rank 0 {rank0:.2f} ({dict(per_rank[0])} over {n_steps} steps), "
        f"other ranks 0; per step per 1,000 ranks: {rank0:.2f} (one designated process per job)"
    )
