"""``launcher: none``: one task per node runs the command itself, with the rendezvous in its environment.

For tools that start their own workers: LLaMA-Factory's ``llamafactory-cli train`` (it runs torchrun
itself when ``FORCE_TORCHRUN=1``, from ``NNODES``, ``NODE_RANK``, ``NPROC_PER_NODE``, ``MASTER_ADDR`` and
``MASTER_PORT``), a script that calls ``accelerate launch``, ``deepspeed`` inside a wrapper. hpcft starts
nothing but the command; ``hpcft node`` still supervises it (SLURM's SIGTERM becomes ``RUN/PREEMPT``).
"""

from __future__ import annotations

from hpcft.launchers.base import LaunchCommand, LaunchContext


def build(ctx: LaunchContext) -> LaunchCommand:
    """The command as it is (a ``.py`` file or ``-m`` module through ``launch.python``)."""
    return LaunchCommand(argv=ctx.entry().argv(ctx.python), env=ctx.rank_env())
