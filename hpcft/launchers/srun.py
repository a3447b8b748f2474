"""The ``srun`` launcher: SLURM starts every rank itself (one task per GPU); no launcher process.

Ranks come from SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS; the rendezvous is env:// at the
first node with the job's port.
"""

from __future__ import annotations

from hpcft.launchers.base import LaunchCommand, LaunchContext


def build(ctx: LaunchContext) -> LaunchCommand:
    """``python <entry>`` with torch's rank variables taken from SLURM's task variables."""
    c = ctx.cluster
    env = ctx.rank_env()
    env["HPCFT_CHECKPOINT_ON_SIGTERM"] = "1"  # SLURM signals these tasks directly (hpcft.train.preemption)
    if c.in_slurm:
        env.update(
            RANK=str(c.proc_id),
            LOCAL_RANK=str(c.local_id),
            WORLD_SIZE=str(c.ntasks),
            LOCAL_WORLD_SIZE=str(ctx.procs_per_node),
        )
    else:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    return LaunchCommand(argv=ctx.entry().argv(ctx.python), env=env)
