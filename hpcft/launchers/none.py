"""``launcher: none``: one task per node runs the command itself, with the rendezvous in its environment.

For tools that start their own workers: LLaMA-Factory's ``llamafactory-cli train`` (it runs torchrun
itself when ``FORCE_TORCHRUN=1``, from ``NNODES``, ``NODE_RANK``, ``NPROC_PER_NODE``, ``MASTER_ADDR`` and
``MASTER_PORT``), a script that calls ``accelerate launch``, ``deepspeed`` inside a wrapper. hpcft starts
nothing but the command; ``hpcft node`` still supervises it (SLURM's SIGTERM becomes ``RUN/PREEMPT``).
"""

from __future__ import annotations

from hpcft.launchers.accelerate import accelerate_config_text
from hpcft.launchers.base import LaunchCommand, LaunchContext
from hpcft.rundir.layout import node_accelerate_config


def build(ctx: LaunchContext) -> LaunchCommand:
    """The command as it is (a ``.py`` file or ``-m`` module through ``launch.python``).

    A command naming ``{accelerate_config}`` (``trl sft --accelerate_config {accelerate_config}``, a
    script calling ``accelerate launch --config_file``) gets this node's complete accelerate config:
    machine rank, main process, world — and DeepSpeed's ``ds_config.json`` under ``--zero``.
    """
    files = {}
    if "accelerate_config" in ctx.used_placeholders() and not ctx.spec.launch.accelerate_config:
        c = ctx.cluster
        rendezvous = {
            "machine_rank": c.node_rank,
            "main_process_ip": ctx.master_addr,
            "main_process_port": c.master_port,
        }
        files[node_accelerate_config(c.node_rank)] = accelerate_config_text(
            ctx.spec, num_machines=c.num_nodes, num_processes=ctx.world_size, rendezvous=rendezvous
        )
    return LaunchCommand(argv=ctx.entry().argv(ctx.python), env=ctx.rank_env(), files=files)
