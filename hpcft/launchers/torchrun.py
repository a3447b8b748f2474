"""torchrun on one node: c10d (default) or static rendezvous at the first host, one agent per node."""

from __future__ import annotations

from hpcft.launchers.base import LaunchCommand, LaunchContext


def build(ctx: LaunchContext) -> LaunchCommand:
    """torchrun for this node (``--standalone`` outside SLURM): ``python -m hpcft.train.torchrun``, torchrun
    itself with hpcft's fixes to its rendezvous's polls (``hpcft.train.elastic_workarounds``).

    hpcft's own trainer runs under ``hpcft.train.warm`` instead (``launch.warm_start``): the same agent,
    options and fixes, with ranks forked from one warm interpreter per node rather than started cold.
    """
    cluster, launch = ctx.cluster, ctx.spec.launch
    warm = launch.warm_start and ctx.entry().target == WARM_TRAINER
    runner = ["-u", "-m", "hpcft.train.warm"] if warm else ["-m", "hpcft.train.torchrun"]
    argv = [ctx.python, *runner, f"--nproc-per-node={ctx.procs_per_node}"]
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
        # the nodes left after a node loss form a world of their own, where torchrun restarts ranks at all
        whole = cluster.num_nodes == ctx.spec.resources.nodes
        low = ctx.spec.survivor_nodes if ctx.restarts and whole else None
        argv += [
            f"--nnodes={low}:{cluster.num_nodes}" if low else f"--nnodes={cluster.num_nodes}",
            *([f"--rdzv-conf={SURVIVORS_RDZV_CONF}"] if low else []),
            "--rdzv-backend=c10d",
            # The name, not the address: c10d decides which agent hosts the store by matching
            # this against its own hostname (torch.distributed.elastic.rendezvous.utils).
            f"--rdzv-endpoint={cluster.master_host}:{cluster.master_port}",
            f"--rdzv-id={cluster.job_id}",
        ]
    if cluster.in_slurm:
        # A crashed worker restarts every node's workers from the newest checkpoint, in seconds.
        argv.append(f"--max-restarts={ctx.restarts}")
    argv += ctx.entry().launcher_args("-m", "--no-python")
    return LaunchCommand(argv=tuple(argv), env={**ctx.rank_env(), **RESTART_WORKAROUND})


# An elastic world (``--nnodes=LOW:N``): how soon the agents left re-form it after a node loss. A dead agent's
# heartbeat is missed after keep_alive_interval × keep_alive_max_attempt (torch: 5 s × 3) and the round then
# completes last_call_timeout (torch: 30 s) after the first LOW nodes joined. At the job's start every agent
# waits for all N all the same (``hpcft.train.elastic_workarounds``): a slow node is never left out of it.
# One heartbeat a second per agent is a write to the rendezvous store each: fine for tens of nodes.
SURVIVORS_RDZV_CONF = "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=3"

WARM_TRAINER = "hpcft.train.main"  # hpcft.train.warm starts only this module warm

# torchrun's agents share their rendezvous TCPStore with the workers and keep each restart's keys
# apart by TORCHELASTIC_RESTART_COUNT, which every agent counts for itself: after a crash on one node
# the other node's new workers read the dead workers' addresses and gloo/NCCL fail to connect
# ("Connection refused"), so every restart fails again (pytorch#135712, pytorch#108158; seen with
# torch 2.13 on the lab). A store of their own per rendezvous round keeps in-job restarts working.
RESTART_WORKAROUND = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
