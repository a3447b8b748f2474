"""The rendezvous port every node of a job uses: derived from the job id, checked free on the master.

Two jobs whose ids agree modulo the port range (12345 and 22345) derive the same port, and on a
shared node the second one's rendezvous would fail to bind. So the first node's first task tries
the derived port and then a bounded list of others (``slurm.env.fallback_ports``), and publishes the
first free one in the run directory (``RUN/.port-JOB.RESTART``); the other nodes wait for that file.
A ``MASTER_PORT`` the user sets is taken as it is. The check and the launcher's own bind are not
atomic: a port taken in between still fails the launch, as it would without the check.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from hpcft.errors import TransientLaunchError
from hpcft.rundir import store
from hpcft.rundir.layout import port_file
from hpcft.slurm.env import ClusterEnv, fallback_ports

WAIT_S = 180.0  # how long the other nodes wait for the master's choice (it only binds a few sockets)


def agree_port(run: Path, cluster: ClusterEnv, env: dict[str, str], *, wait_s: float = WAIT_S) -> int:
    """The port this job's rendezvous uses on every node (the master decides; the others read its choice)."""
    if env.get("MASTER_PORT"):
        return cluster.master_port
    path = run / port_file(cluster.job_id, cluster.restart_count)
    if cluster.node_rank == 0 and cluster.local_id == 0:
        port = first_free(fallback_ports(cluster.master_port))
        store.write_atomic(path, f"{port}\n")
        return port
    return _read_published(path, cluster, wait_s)


def first_free(ports: tuple[int, ...]) -> int:
    """The first of ``ports`` nothing listens on here; LaunchError naming them if all are taken."""
    for port in ports:
        if port_is_free(port):
            return port
    raise TransientLaunchError(
        f"ports {', '.join(map(str, ports))} are all in use on this node: the rendezvous cannot start",
        hint="another program holds hpcft's port range here; set MASTER_PORT to a free port",
    )


def port_is_free(port: int) -> bool:
    """True when a listening socket could bind ``port`` on every address (as the rendezvous store will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _read_published(path: Path, cluster: ClusterEnv, wait_s: float) -> int:
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        text = (store.read_text(path) or "").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.2)
    raise TransientLaunchError(
        f"the first node ({cluster.master_host}) did not publish the rendezvous port in {path} within {wait_s:.0f} s",
        hint="its output names the reason (its preflight runs first); the run directory must be shared",
    )
