"""The deepspeed launcher (``python -m deepspeed.launcher.runner``) with its transports.

* ``deepspeed`` (no ssh): run on every node with ``--no_ssh --node_rank`` — the default inside SLURM.
* ``deepspeed-pdsh``: run once on the first node; pdsh reaches every host over ssh. DeepSpeed
  forwards only a few variable prefixes to the remote ranks, so the rest goes in ``.deepspeed_env``.
* ``deepspeed-openmpi``: run once; mpirun starts the ranks over ssh (``--mca plm rsh``), not through srun:
  SLURM's preemption SIGTERM goes to every step task, and an srun-started orted would kill its ranks
  at once instead of letting them checkpoint (``hpcft node``, the one step, turns it into
  ``RUN/PREEMPT``). ``--mca ras ^slurm``: the hostfile is the allocation (mpirun runs inside that
  one-node step, whose SLURM_NODELIST names only this node). DeepSpeed adds ``--mca
  btl_tcp_if_include eth0`` unless one is given, so hpcft always gives one: ``launch.network_interface``
  or the master's subnet (derived on the node).
* ``deepspeed-mvapich``: run once; MVAPICH2's mpirun (hydra) starts the ranks over ssh (``-launcher ssh``)
  for the same reason; hpcft's preflight refuses it early where MVAPICH2-GDR is not installed.
All use the hostfile ``RUN/hostfile`` (``host slots=N``; N = GPUs per node, processes on CPU).
"""

from __future__ import annotations

import re
import shlex

from hpcft.launchers.base import LaunchCommand, LaunchContext, get, hostfile_text

HOSTFILE = "hostfile"
DS_ENV_FILE = ".deepspeed_env"
# Per-node or launcher-owned values: never forwarded to the remote ranks.
_NOT_FORWARDED = {"NODE_RANK", "MASTER_ADDR", "MASTER_PORT"}
# Operational settings of the job's environment that ranks started over ssh would otherwise lose
# (a JIT-op cache rebuilt on every node, a different HF cache). Secrets are never written to the file.
# HPCFT_HEARTBEAT_DIR (hpcft.train.heartbeat.ENV): where the ranks publish their progress for the node's watchdog.
FORWARDED_FROM_JOB = ("TORCH_EXTENSIONS_DIR", "HF_HOME", "HF_DATASETS_CACHE", "OMP_NUM_THREADS", "PYTHONPATH",
                      "HPCFT_HEARTBEAT_DIR")  # fmt: skip


def transport(ctx: LaunchContext) -> str:
    """``nossh``, ``pdsh``, ``openmpi`` or ``mvapich`` (the registry's entry for the launcher)."""
    return get(ctx.spec.launch.launcher).transport or "nossh"


def build(ctx: LaunchContext) -> LaunchCommand:
    """The runner command for this node, plus the hostfile (and ``.deepspeed_env`` for pdsh)."""
    c, kind = ctx.cluster, transport(ctx)
    hostfile = f"{ctx.run_dir}/{HOSTFILE}"
    argv = [
        ctx.python,
        "-u",
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        hostfile,
        f"--master_addr={ctx.master_addr}",
        f"--master_port={c.master_port}",
    ]
    files = {HOSTFILE: hostfile_text(c.hosts, ctx.procs_per_node)}
    env = ctx.rank_env()
    if kind == "nossh":
        argv += ["--no_ssh", f"--node_rank={c.node_rank}"]
    else:
        # hpcft's preflight has already checked ssh to every host (pdsh) with a clearer error.
        argv += ["--launcher", kind, "--no_ssh_check", "--force_multi"]
    secrets = ctx.spec.launch.env_passthrough
    entry = list(ctx.entry().launcher_args("--module", "--no_python"))
    if kind == "pdsh":
        forwarded = {k: ctx.node_env[k] for k in FORWARDED_FROM_JOB if k in ctx.node_env}
        files[DS_ENV_FILE] = deepspeed_env_text({**forwarded, **env})
        entry = [entry[0], *(pdsh_user_arg(a) for a in entry[1:])]
        if secrets:
            # Secrets go by name over ssh (SendEnv; the nodes' sshd must AcceptEnv them: preflight checks):
            # never into .deepspeed_env or pdsh's command line, which DeepSpeed's runner logs.
            ssh_args = " ".join(f"-o SendEnv={name}" for name in secrets)
            env["PDSH_SSH_ARGS_APPEND"] = f"{ctx.node_env.get('PDSH_SSH_ARGS_APPEND', '')} {ssh_args}".strip()
    elif kind == "openmpi":
        # mpirun copies each -x NAME from its own environment to every rank: names only, no values. Ranks
        # started over ssh have nothing else of the job's environment: the job's settings go the same way.
        forwarded = [k for k in FORWARDED_FROM_JOB if k in ctx.node_env and k not in env]
        exports = "".join(f" -x {name}" for name in (*secrets, *forwarded, *sorted(env)))
        interface = ctx.network or ctx.spec.launch.network_interface
        argv.append(f"--launcher_args=--mca plm rsh --mca ras ^slurm --mca btl_tcp_if_include {interface}{exports}")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    elif kind == "mvapich":
        # MVAPICH2's mpirun (hydra): ssh, not srun (see the module's docstring); secrets by name only.
        genv = f" -genvlist {','.join(secrets)}" if secrets else ""
        argv.append(f"--launcher_args=-launcher ssh{genv}")
    argv += entry
    return LaunchCommand(argv=tuple(argv), env=env, files=files)


# DeepSpeed's runner builds the pdsh command line as one shell string for the remote nodes
# (deepspeed/launcher/multinode_runner.py, checked against 0.19.8): ``MultiNodeRunner.add_export`` strips
# each forwarded value and wraps one holding anything but [\w@%+=:,./-] in "…" without escaping, and
# ``PDSHRunner.parse_user_args`` wraps an argument holding a space in "…" escaping only '"' and passes
# the others bare. The remote shell then runs $(…) and `…` and expands $VAR inside them, and drops
# empty arguments. These two encode a value so that DeepSpeed's wrapping gives it back unchanged.
_DQ_SPECIAL = str.maketrans({"\\": "\\\\", "$": "\\$", "`": "\\`"})


def ds_export_value(value: str) -> str:
    """A ``.deepspeed_env`` value that reaches the pdsh ranks as ``value`` (inside DeepSpeed's "…").

    Leading and trailing blanks cannot survive DeepSpeed's ``strip()``: ``spec.rules`` refuses them.
    """
    if _DS_SAFE.fullmatch(value):
        return value  # DeepSpeed passes it bare; the remote shell leaves it as it is
    return value.translate(_DQ_SPECIAL).replace('"', '\\"')


def pdsh_user_arg(arg: str) -> str:
    """An argument of the user's command that reaches the pdsh ranks as ``arg``."""
    if " " in arg:
        return arg.translate(_DQ_SPECIAL)  # DeepSpeed wraps it in "…" and escapes '"' itself
    return shlex.quote(arg)  # passed bare to the remote shell: quote it (no space in the quoting)


_DS_SAFE = re.compile(r"[\w@%+=:,./-]+")


def deepspeed_env_text(env: dict[str, str]) -> str:
    """``.deepspeed_env`` lines, each value encoded for DeepSpeed's pdsh runner (``ds_export_value``)."""
    lines = [f"{k}={ds_export_value(v)}\n" for k, v in sorted(env.items()) if k not in _NOT_FORWARDED]
    return "".join(lines)
