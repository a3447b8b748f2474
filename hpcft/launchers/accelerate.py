"""``accelerate launch`` on each node, with the machine rank and main process from the allocation.

hpcft writes ``RUN/accelerate.yaml`` (``hpcft.zero.accelerate_config``) unless the job names its
own (``launch.accelerate_config``); the allocation's values are passed as flags, which override
the file's.
"""

from __future__ import annotations

from hpcft.launchers import LaunchCommand, LaunchContext

CONFIG_FILE = "accelerate.yaml"


def build(ctx: LaunchContext) -> LaunchCommand:
    """``python -m accelerate.commands.launch`` for this node."""
    from hpcft.zero import accelerate_config_text

    c = ctx.cluster
    files = {}
    config = ctx.spec.launch.accelerate_config
    if config is None:
        config = f"{ctx.run_dir}/{CONFIG_FILE}"
        files[CONFIG_FILE] = accelerate_config_text(ctx.spec, num_machines=c.num_nodes, num_processes=ctx.world_size)
    argv = [
        ctx.python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        f"--num_machines={c.num_nodes}",
        f"--num_processes={ctx.world_size}",
        f"--machine_rank={c.node_rank}",
        f"--main_process_ip={ctx.master_addr}",
        f"--main_process_port={c.master_port}",
    ]
    entry = list(ctx.entry_argv())
    argv += ["--module", *entry[1:]] if entry[0] == "-m" else entry
    return LaunchCommand(argv=tuple(argv), env=ctx.rank_env(), files=files)
