"""The rendezvous port: derived from the job id, checked free on the master, learnt by the other nodes."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from hpcft.errors import LaunchError
from hpcft.node.rendezvous import agree_port, port_is_free
from hpcft.slurm.env import PORT_BASE, PORT_SPAN, ClusterEnv, fallback_ports, master_port


def cluster(job: str, node: int, port: int | None = None) -> ClusterEnv:
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": str(node)}
    c = ClusterEnv.from_mapping(env)
    return c if port is None else ClusterEnv(**{**c.__dict__, "master_port": port})


def listening(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("", port))
    s.listen()
    return s


def test_jobs_whose_ids_agree_modulo_the_range_derive_the_same_port():
    assert master_port("12345", {}) == master_port("22345", {}) == PORT_BASE + 2345


def test_fallbacks_stay_in_the_range_and_are_distinct():
    ports = fallback_ports(PORT_BASE + PORT_SPAN - 1)
    assert len(set(ports)) == len(ports) == 8
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    assert fallback_ports(29500) == (29500,)  # a MASTER_PORT outside the range is the user's: no fallback


def test_the_master_skips_a_taken_port_and_the_other_node_learns_its_choice(tmp_path: Path):
    first = next(p for p in range(PORT_BASE + 4000, PORT_BASE + 5000) if port_is_free(p))
    taken = listening(first)  # another job's rendezvous store on this node
    try:
        got = {}
        other = threading.Thread(target=lambda: got.setdefault(1, agree_port(tmp_path, cluster("7", 1, first), {})))
        other.start()  # node 1 waits for the master's file
        got[0] = agree_port(tmp_path, cluster("7", 0, first), {})
        other.join(10)
    finally:
        taken.close()
    assert got[0] == got[1] == fallback_ports(first)[1]
    assert (tmp_path / ".port-7.0").read_text() == f"{got[0]}\n"


def test_master_port_set_by_the_user_is_taken_as_it_is(tmp_path: Path):
    assert agree_port(tmp_path, cluster("7", 1, 29555), {"MASTER_PORT": "29555"}) == 29555
    assert not list(tmp_path.iterdir())


def test_a_non_numeric_master_port_is_an_error_not_a_traceback():
    with pytest.raises(LaunchError, match="MASTER_PORT='abc' is not a port"):
        master_port("1", {"MASTER_PORT": "abc"})


def test_a_node_whose_master_never_publishes_gives_up_with_the_reason(tmp_path: Path):
    with pytest.raises(LaunchError, match="did not publish the rendezvous port"):
        agree_port(tmp_path, cluster("8", 1), {}, wait_s=0.5)
