"""Where this process runs, read from SLURM's environment: hosts, node rank, rendezvous.

``ClusterEnv.from_mapping(env)`` is pure: it takes a mapping (``os.environ`` in production, a
dict in tests) and decides the rendezvous every node must agree on, with no randomness:
master = first host of the expanded nodelist, port = a function of the job id.
Resolving the master's address (a network lookup) is ``resolve_master``, kept apart.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import hostlist

from hpcft.errors import LaunchError, TransientLaunchError

# Every SLURM variable hpcft reads, in one table (man sbatch, "OUTPUT ENVIRONMENT VARIABLES").
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "nodelist": "SLURM_JOB_NODELIST",
    "num_nodes": "SLURM_JOB_NUM_NODES",
    "node_id": "SLURM_NODEID",
    "proc_id": "SLURM_PROCID",
    "local_id": "SLURM_LOCALID",
    "ntasks": "SLURM_NTASKS",
    "gpus_on_node": "SLURM_GPUS_ON_NODE",
    "node_name": "SLURMD_NODENAME",
    "restart_count": "SLURM_RESTART_COUNT",
}

# Below Linux's default ephemeral range (32768-60999), above the well-known and most service ports.
PORT_BASE = 15000
PORT_SPAN = 10000


@dataclass(frozen=True)
class ClusterEnv:
    """The allocation as one node sees it.

    Attributes:
        job_id: SLURM job id ("" outside SLURM).
        hosts: every node of the job, in nodelist order.
        node_rank: this node's index in ``hosts`` (SLURM_NODEID).
        master_host: the first host; it hosts the rendezvous.
        master_port: rendezvous port, identical on every node.
        gpus_on_node: GPUs SLURM gave this node (None when it says nothing).
        restart_count: how often SLURM has requeued this job.
        proc_id: this task's global index (one task per GPU in the ``srun`` launcher).
        local_id: this task's index on its node.
        ntasks: tasks in the job step.
    """

    job_id: str
    hosts: tuple[str, ...]
    node_rank: int
    master_host: str
    master_port: int
    gpus_on_node: int | None = None
    restart_count: int = 0
    proc_id: int = 0
    local_id: int = 0
    ntasks: int = 1

    @property
    def num_nodes(self) -> int:
        """Number of nodes in the allocation."""
        return len(self.hosts)

    @property
    def in_slurm(self) -> bool:
        """True inside a SLURM job."""
        return bool(self.job_id)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> ClusterEnv:
        """Read the allocation from SLURM's variables; a single local node outside SLURM."""
        job_id = slurm_job_id(env)
        if not job_id:
            return cls.local(env)
        nodelist = env.get(SLURM_VARS["nodelist"], "")
        if not nodelist:
            raise LaunchError(
                f"{SLURM_VARS['job_id']}={job_id} is set but {SLURM_VARS['nodelist']} is empty",
                hint="run `hpcft node` inside an sbatch/salloc allocation (srun sets both)",
            )
        hosts = tuple(expand_hosts(nodelist))
        node_rank = int(env.get(SLURM_VARS["node_id"], "0"))
        if not 0 <= node_rank < len(hosts):
            raise LaunchError(f"SLURM_NODEID={node_rank} is outside the {len(hosts)} hosts of {nodelist!r}")
        return cls(
            job_id=job_id,
            hosts=hosts,
            node_rank=node_rank,
            master_host=hosts[0],
            master_port=master_port(job_id, env),
            gpus_on_node=_int_or_none(env.get(SLURM_VARS["gpus_on_node"])),
            restart_count=int(env.get(SLURM_VARS["restart_count"], "0") or 0),
            proc_id=int(env.get(SLURM_VARS["proc_id"], "0") or 0),
            local_id=int(env.get(SLURM_VARS["local_id"], "0") or 0),
            ntasks=int(env.get(SLURM_VARS["ntasks"], "1") or 1),
        )

    @classmethod
    def local(cls, env: Mapping[str, str]) -> ClusterEnv:
        """This machine alone (the local backend): one node, rendezvous on loopback."""
        return cls(
            job_id="",
            hosts=("localhost",),
            node_rank=0,
            master_host="127.0.0.1",
            master_port=_port(env.get("MASTER_PORT") or str(PORT_BASE)),
        )

    @classmethod
    def preview(cls, nodes: int, gpus_per_node: int | None) -> ClusterEnv:
        """The allocation as node 0 will see it, with placeholder host names and job id (for plans)."""
        return cls(
            job_id="JOBID",
            hosts=tuple(f"<node{i}>" for i in range(nodes)),
            node_rank=0,
            master_host="<node0>",
            master_port=master_port("0", {}),
            gpus_on_node=gpus_per_node or None,
        )


def node_name(env: Mapping[str, str]) -> str:
    """This node's name as SLURM knows it (``SLURMD_NODENAME``), else the hostname: the one derivation."""
    return env.get(SLURM_VARS["node_name"]) or socket.gethostname()


def expand_hosts(nodelist: str) -> list[str]:
    """``"gpu[001-002],cpu3"`` → ``["gpu001", "gpu002", "cpu3"]`` (python-hostlist)."""
    try:
        return hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as e:
        raise LaunchError(f"cannot expand SLURM nodelist {nodelist!r}: {e}") from None


def master_port(job_id: str, env: Mapping[str, str]) -> int:
    """``MASTER_PORT`` from the environment if set, else a pure function of the job id."""
    if env.get("MASTER_PORT"):
        return _port(env["MASTER_PORT"])
    array, _, task = job_id.partition("_")  # array tasks "123_4": 123 + 4, so that tasks differ
    return PORT_BASE + (_number(array) + _number(task)) % PORT_SPAN


def _number(text: str) -> int:
    return int("".join(ch for ch in text if ch.isdigit()) or "0")


def slurm_job_id(env: Mapping[str, str]) -> str:
    """The job's id as squeue and sacct name it: ``ARRAY_TASK`` for a job array's task (``SLURM_JOB_ID`` is
    then a number sacct shows under the array's name), else ``SLURM_JOB_ID``; "" outside SLURM."""
    array, task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    if array and task:
        return f"{array}_{task}"
    return env.get(SLURM_VARS["job_id"], "")


# Ports the master tries when the derived one is taken (two jobs whose ids agree modulo PORT_SPAN share a
# node, or another program holds it): a bounded list every node can compute; the master publishes its pick.
PORT_TRIES = 8
_PORT_STRIDE = 1009  # a prime: the tries spread over the range instead of queueing behind a neighbour


def fallback_ports(port: int) -> tuple[int, ...]:
    """``port`` and the ``PORT_TRIES - 1`` ports after it in hpcft's range, in the order the master tries them."""
    offset = port - PORT_BASE
    if not 0 <= offset < PORT_SPAN:
        return (port,)  # MASTER_PORT outside hpcft's range: the user's choice, no fallback
    return tuple(PORT_BASE + (offset + k * _PORT_STRIDE) % PORT_SPAN for k in range(PORT_TRIES))


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise LaunchError(f"MASTER_PORT={text!r} is not a port number", hint="unset it, or give 1024-65535")
    return int(text)


def resolve_master(cluster: ClusterEnv) -> str:
    """The master's IP address as this node resolves it; loopback is refused for multi-node jobs.

    A head node whose /etc/hosts maps its own name to 127.0.1.1 (Debian's default) would
    otherwise tell the other nodes to connect to themselves and hang until a timeout.
    """
    try:
        addr = socket.gethostbyname(cluster.master_host)
    except OSError as e:  # a DNS hiccup as often as a wrong name: a rerun decides
        raise TransientLaunchError(
            f"node {cluster.hosts[cluster.node_rank]}: cannot resolve the master host {cluster.master_host!r}: {e}",
            hint="the first node of the allocation must be resolvable from every node (DNS or /etc/hosts)",
        ) from None
    if cluster.num_nodes > 1 and ipaddress.ip_address(addr).is_loopback:
        raise LaunchError(
            f"node {cluster.hosts[cluster.node_rank]}: master host {cluster.master_host!r} resolves to "
            f"loopback {addr}; the other nodes could not reach it",
            hint="fix /etc/hosts on the node (Debian maps the own hostname to 127.0.1.1) "
            "or set MASTER_ADDR-resolvable names",
        )
    return addr


# MPI launchers (Open MPI, MVAPICH2, MPICH/PMI) name ranks their own way; torch wants these names.
MPI_RANK_VARS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


def torch_rank_env(env: Mapping[str, str]) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE for a process started by mpirun; {} if already set.

    DeepSpeed's openmpi and mvapich runners start ranks with mpirun, which sets only its own
    variables; torch.distributed's env:// init needs the torch names.
    """
    if "RANK" in env:
        return {}
    for rank, size, local, local_size in MPI_RANK_VARS:
        if rank in env:
            out = {"RANK": env[rank], "WORLD_SIZE": env[size], "LOCAL_RANK": env.get(local, "0")}
            if local_size in env:
                out["LOCAL_WORLD_SIZE"] = env[local_size]
            return out
    return {}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def allocation_left(env: Mapping[str, str], hosts: list[str]) -> dict[str, str]:
    """The batch environment of a job that now holds only ``hosts`` of its nodes; pure.

    A ``--no-kill`` job keeps running when a node fails, but its batch shell's variables still name
    the nodes it started with: srun reads ``SLURM_NNODES``/``SLURM_NTASKS`` as its own -N/-n, and the
    node side expands ``SLURM_JOB_NODELIST``. Per-node counts (``1(x2)``) are kept per node.
    """
    out = dict(env)
    nodelist = hostlist.collect_hostlist(hosts)
    for name in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        out[name] = nodelist
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        out[name] = str(len(hosts))
    per_node = _int_or_none(env.get("SLURM_NTASKS_PER_NODE"))
    for name in ("SLURM_NTASKS", "SLURM_NPROCS"):
        if name in env and per_node:
            out[name] = str(per_node * len(hosts))
    for name in ("SLURM_TASKS_PER_NODE", "SLURM_JOB_CPUS_PER_NODE"):
        same = re.fullmatch(r"(\d+)(\(x\d+\))?", env.get(name, ""))  # "8(x2)"; mixed ones ("8,4(x2)") stay
        if same:
            out[name] = f"{same[1]}(x{len(hosts)})" if len(hosts) > 1 else same[1]
    return out
