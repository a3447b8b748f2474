"""torchrun on one node: c10d (default) or static rendezvous at the first host, one agent per node."""

from __future__ import annotations

from hpcft.launchers.base import LaunchCommand, LaunchContext


def build(ctx: LaunchContext) -> LaunchCommand:
    """``python -m torch.distributed.run`` for this node (``--standalone`` outside SLURM)."""
    cluster, launch = ctx.cluster, ctx.spec.launch
    argv = [ctx.python, "-m", "torch.distributed.run", f"--nproc-per-node={ctx.procs_per_node}"]
    if not cluster.in_slurm:
        argv.append("--standalone")
    elif launch.rdzv == "static":
        argv += [
            f"--nnodes={cluster.num_nodes}",
            "--rdzv-backend=static",
            f"--master-addr={ctx.master_addr}",
            f"--master-port={cluster.master_port}",
            f"--node-rank={cluster.node_rank}",
        ]
    else:
        argv += [
            f"--nnodes={cluster.num_nodes}",
            "--rdzv-backend=c10d",
            # The name, not the address: c10d decides which agent hosts the store by matching
            # this against its own hostname (torch.distributed.elastic.rendezvous.utils).
            f"--rdzv-endpoint={cluster.master_host}:{cluster.master_port}",
            f"--rdzv-id={cluster.job_id}",
        ]
    if cluster.in_slurm:
        argv.append(f"--max-restarts={launch.max_restarts}")
    argv += ctx.entry_argv()
    return LaunchCommand(argv=tuple(argv), env=ctx.rank_env())
