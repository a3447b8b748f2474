"""The gloo exit-abort workaround (hpcft.train.dist.exit_cleanly) on real 2-rank gloo groups."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.train

SCRIPT = """\
import os, sys, torch, torch.distributed as dist
from hpcft.train.dist import exit_cleanly
dist.init_process_group("gloo")
t = torch.ones(4096) * (dist.get_rank() + 1)
for _ in range(20):
    dist.all_reduce(t)  # keep gloo's worker threads busy right up to the exit
with open(os.path.join(sys.argv[1], f"done-{dist.get_rank()}"), "w") as f:
    f.write(str(float(t[0])))
print("rank", dist.get_rank(), "buffered output must survive os._exit", end="")
exit_cleanly(int(sys.argv[2]))
"""


@pytest.mark.parametrize("rc", [0, 0, 0, 7])
def test_exit_cleanly_returns_the_status_and_flushes(train_stack, tmp_path, rc):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(script),
            str(tmp_path),
            str(rc),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "terminate called" not in proc.stderr
    assert (proc.returncode == 0) == (rc == 0), proc.stderr[-2000:]
    values = {(tmp_path / f"done-{r}").read_text() for r in (0, 1)}
    assert values == {str(float(3 * 2**19))}  # (1+2), then doubled by each of the other 19 all_reduces
    assert "buffered output must survive os._exit" in proc.stdout
