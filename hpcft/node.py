"""``hpcft node RUN``: run once per node (by srun, or by the local runner).

Reads the allocation from the environment, checks the rendezvous host, builds the launcher's
command, writes its files into the run directory and execs it. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hpcft import runs
from hpcft.launchers import LaunchCommand, LaunchContext, build_launch
from hpcft.slurm.env import ClusterEnv, resolve_master

log = logging.getLogger(__name__)


def prepare(run: Path, env: dict[str, str]) -> LaunchCommand:
    """Decide this node's launch command (preflight included); no side effects but a DNS lookup."""
    spec = runs.load_run_spec(run)
    cluster = ClusterEnv.from_mapping(env)
    master_addr = resolve_master(cluster) if cluster.in_slurm else cluster.master_host
    python = spec.launch.python or sys.executable
    return build_launch(LaunchContext(spec, cluster, str(run), python, master_addr))


def exec_node(run: Path) -> None:
    """Prepare, write the launcher's files, and replace this process with the launcher."""
    cmd = prepare(run, dict(os.environ))
    for name, text in cmd.files.items():
        runs.write_atomic(run / name, text)
    env = {**os.environ, **cmd.env}
    host = os.environ.get("SLURMD_NODENAME", "localhost")
    print(f"hpcft node {host}: {' '.join(cmd.argv)}", flush=True)
    os.chdir(run)
    os.execvpe(cmd.argv[0], list(cmd.argv), env)
