"""ClusterEnv: nodelists, node rank, rendezvous port, loopback refusal."""

import pytest

from hpcft.errors import LaunchError
from hpcft.slurm.env import PORT_BASE, ClusterEnv, expand_hosts, master_port, resolve_master

NODELISTS = [
    ("node1", ["node1"]),
    ("node[1-2]", ["node1", "node2"]),
    ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("n-1-[01-03]", ["n-1-01", "n-1-02", "n-1-03"]),
    ("rack[1-2]-node[1-2]", ["rack1-node1", "rack1-node2", "rack2-node1", "rack2-node2"]),
    ("c[9-11]", ["c9", "c10", "c11"]),
]


@pytest.mark.parametrize(("nodelist", "hosts"), NODELISTS)
def test_expand_real_nodelist_formats(nodelist, hosts):
    assert expand_hosts(nodelist) == hosts


def test_bad_nodelist_is_a_launch_error():
    with pytest.raises(LaunchError, match="cannot expand"):
        expand_hosts("gpu[1-")


def slurm_env(**extra):
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[001-004]",
        "SLURM_NODEID": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_RESTART_COUNT": "1",
    }
    env.update(extra)
    return env


def test_from_mapping_reads_the_allocation():
    c = ClusterEnv.from_mapping(slurm_env())
    assert c.hosts == ("gpu001", "gpu002", "gpu003", "gpu004")
    assert c.num_nodes == 4
    assert c.node_rank == 2
    assert c.master_host == "gpu001"
    assert c.master_port == PORT_BASE + 4242
    assert c.gpus_on_node == 8
    assert c.restart_count == 1
    assert c.in_slurm


def test_every_node_agrees_on_the_rendezvous():
    views = [ClusterEnv.from_mapping(slurm_env(SLURM_NODEID=str(i))) for i in range(4)]
    assert len({(v.master_host, v.master_port) for v in views}) == 1
    assert [v.node_rank for v in views] == [0, 1, 2, 3]


def test_port_is_a_function_of_the_job_id_in_range():
    assert master_port("123", {}) == master_port("123", {})
    assert master_port("123", {}) != master_port("124", {})
    for job in ("1", "9999", "10000", "987654321", "77_3"):
        assert PORT_BASE <= master_port(job, {}) < PORT_BASE + 10000
    assert master_port("77_3", {}) == master_port("80", {})  # array tasks: array id + task id, so they differ


def test_master_port_env_overrides():
    assert ClusterEnv.from_mapping(slurm_env(MASTER_PORT="29555")).master_port == 29555


def test_outside_slurm_is_one_local_node():
    c = ClusterEnv.from_mapping({})
    assert not c.in_slurm
    assert c.hosts == ("localhost",) and c.node_rank == 0


def test_missing_nodelist_is_explained():
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST"):
        ClusterEnv.from_mapping({"SLURM_JOB_ID": "1"})


def test_node_id_outside_hosts_is_refused():
    with pytest.raises(LaunchError, match="outside"):
        ClusterEnv.from_mapping(slurm_env(SLURM_NODEID="9"))


def test_loopback_master_refused_for_multi_node():
    c = ClusterEnv.from_mapping({"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "localhost,other"})
    with pytest.raises(LaunchError, match="loopback"):
        resolve_master(c)


def test_loopback_master_fine_for_one_node():
    c = ClusterEnv.from_mapping({"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "localhost"})
    assert resolve_master(c).startswith("127.")


def test_unresolvable_master_names_the_host():
    c = ClusterEnv.from_mapping({"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "no-such-host-hpcft[1-2]"})
    with pytest.raises(LaunchError, match="no-such-host-hpcft1"):
        resolve_master(c)
