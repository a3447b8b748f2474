"""``hpcft node RUN``: run once per node (by srun), once per job (head-node launchers), or once
per rank (the ``srun`` launcher), and by the local runner.

Preflight first — the run directory is visible here, the master resolves to a non-loopback
address, the launcher exists (for a head-node launcher: ssh reaches every host) — so a broken node ends the job
at once with its name and the reason instead of hanging until a collective times out. Then it
builds the launcher's command, writes its files into the run directory and runs it (inside SLURM as
a child it supervises: SIGTERM becomes a checkpoint request, a crash an in-job restart).
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.errors import HpcftError, LaunchError, TransientLaunchError
from hpcft.launchers import base as launchers
from hpcft.launchers.base import LaunchCommand, LaunchContext, build_launch
from hpcft.launchers.command import command_kind
from hpcft.node import ds_ops as ops
from hpcft.node.rendezvous import agree_port
from hpcft.node.watchdog import Watchdog, heartbeat_root
from hpcft.plan.requeue import InJobRestarts, in_job_restarts
from hpcft.rundir import checkpoints, lifecycle, store
from hpcft.rundir.layout import SPEC_FILE
from hpcft.slurm.env import ClusterEnv, node_name, resolve_master
from hpcft.train import heartbeat

if TYPE_CHECKING:
    from hpcft.spec import JobSpec


def read_spec(run: Path, host: str) -> JobSpec:
    """The run's spec; a node that cannot see the run directory says so."""
    if not (run / SPEC_FILE).is_file():
        raise LaunchError(
            f"node {host}: cannot see the run directory {run}",
            hint="the runs directory must be on a filesystem shared by all nodes (run.runs_dir)",
        )
    return store.load_run_spec(run)


def prepare(run: Path, env: Mapping[str, str], spec: JobSpec) -> tuple[LaunchCommand, InJobRestarts, dict]:
    """Preflight and decide this node's launch command, who restarts crashed ranks, and the node's env."""
    host = node_name(env)
    cluster = ClusterEnv.from_mapping(env)
    restarts = in_job_restarts(spec, cluster.num_nodes, int(store.read_state(run).get("failures", 0)))
    if not cluster.in_slurm:
        restarts = InJobRestarts(None, 0, "outside SLURM")
    master_addr = resolve_master(cluster) if cluster.in_slurm else cluster.master_host
    check_launcher(spec, host)
    if cluster.in_slurm:
        cluster = dataclasses.replace(cluster, master_port=agree_port(run, cluster, env))
    network = None
    if spec.launch.launcher == "deepspeed-openmpi" and not spec.launch.network_interface:
        network = subnet_of(master_addr, parse_ip_addr(_run_text(["ip", "-o", "-4", "addr", "show"])))
    python = node_python(spec)
    env = ops.with_python_bin(env, python)
    if watched(spec, env):
        env = {**env, heartbeat.ENV: str(heartbeat_root(env))}  # for ranks started over ssh too (launchers/deepspeed)
    check_command(spec, env, host)
    torchrun_restarts = restarts.count if restarts.by == "torchrun" else 0
    # {resume_checkpoint} / HPCFT_RESUME_CHECKPOINT are for a user's command; hpcft's trainer finds its own.
    resume = checkpoints.newest_resumable(checkpoints.checkpoints_dir(spec, run)) if spec.launch.command else None
    ctx = LaunchContext(spec, cluster, str(run), python, master_addr, network, env, restarts=torchrun_restarts,
                        node_has_gpu=ops.node_has_cuda(), resume_checkpoint=str(resume or ""))  # fmt: skip
    if launchers.get(spec.launch.launcher).transport in SSH_TRANSPORTS:
        pdsh = spec.launch.launcher == "deepspeed-pdsh"  # mpirun passes the secrets itself, not through sshd
        check_ssh(cluster.hosts, host, spec.launch.env_passthrough if pdsh else (), spec.launch.launcher)
    return build_launch(ctx), restarts, env


def check_command(spec: JobSpec, env: Mapping[str, str], host: str) -> None:
    """The user's program is on this node's PATH (after launch.setup, with the job's python's bin)."""
    command = spec.launch.command
    if command_kind(command) == "program" and shutil.which(command[0], path=env.get("PATH")) is None:
        raise LaunchError(
            f"node {host}: launch.command: {command[0]!r} is not on PATH here",
            hint="install it in the job's environment (launch.python's), load it in launch.setup, or give a path",
        )


def check_launcher(spec: JobSpec, host: str) -> None:
    """The launcher's module or program exists here (MVAPICH: the MVAPICH2-GDR build)."""
    launcher = spec.launch.launcher
    if launchers.get(launcher).needs is None:
        return
    kind, name = launchers.get(launcher).needs
    found = importlib.util.find_spec(name) is not None if kind == "module" else shutil.which(name) is not None
    if not found:
        what = f"Python module {name!r}" if kind == "module" else f"program {name!r}"
        raise LaunchError(
            f"node {host}: launcher {launcher} needs the {what}, which is not installed here",
            hint="install it on every node, or choose another launcher (--launcher)",
        )
    if launcher == "deepspeed-mvapich":
        out = _run_text(["mpiname"])
        if "MVAPICH2-GDR" not in out:
            raise LaunchError(
                f"node {host}: launcher deepspeed-mvapich needs MVAPICH2-GDR; `mpiname` says {out.strip()!r}",
                hint="DeepSpeed's MVAPICH runner accepts only MVAPICH2-GDR; use deepspeed-openmpi or deepspeed",
            )


# The head-node launchers start the other nodes' processes over ssh (pdsh; mpirun: --mca plm rsh, hydra's
# -launcher ssh), so that SLURM's preemption SIGTERM reaches only hpcft node (launchers/deepspeed.py).
SSH_TRANSPORTS = ("pdsh", "openmpi", "mvapich")


def check_ssh(
    hosts: tuple[str, ...], here: str, passthrough: tuple[str, ...] = (), launcher: str = "deepspeed-pdsh"
) -> None:
    """Passwordless ssh to every host of the job works (the head-node launchers need it); name the ones that fail.

    With ``launch.env_passthrough``, also that each host's sshd accepts those variables (``SendEnv``
    needs ``AcceptEnv`` there): the probe sends them as the ranks will and lists the names that arrive
    (names only; no value travels back).
    """
    send = [arg for name in passthrough for arg in ("-o", f"SendEnv={name}")]
    # The names are checked identifiers (spec.rules); only the names of those that arrived come back.
    report = f'for n in {" ".join(passthrough)}; do printenv "$n" >/dev/null && echo "$n"; done; true'

    def probe(host: str) -> tuple[str, int, str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", *send, host, report if send else "true"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return host, -1, str(e)
        missing = sorted(set(passthrough) - set(proc.stdout.split()))
        if proc.returncode == 0 and missing:
            return host, -2, f"its sshd does not accept {', '.join(missing)}"
        return host, proc.returncode, proc.stderr.strip()

    with ThreadPoolExecutor(max_workers=16) as pool:
        failed = [r for r in pool.map(probe, hosts) if r[1] != 0]
    if any(rc == -2 for _, rc, _ in failed):
        detail = "; ".join(f"{h}: {err}" for h, rc, err in failed if rc == -2)
        raise LaunchError(
            f"node {here}: {launcher} passes launch.env_passthrough to the ranks over ssh, and {detail}",
            hint="ask the admins for `AcceptEnv NAME` in the nodes' sshd_config, or use --launcher deepspeed "
            "(no ssh: every node inherits the job's environment)",
        )
    if failed:
        detail = "; ".join(f"{h}: {err or f'exit {rc}'}" for h, rc, err in failed)
        raise TransientLaunchError(
            f"node {here}: ssh to {len(failed)} host(s) failed, {launcher} cannot start: {detail}",
            hint="set up passwordless ssh between the nodes (keys, known_hosts), or use --launcher deepspeed",
        )


def parse_ip_addr(text: str) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """``ip -o -4 addr show`` → [(interface, address/prefix)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            out.append((parts[1], ipaddress.IPv4Interface(parts[3])))
    return out


def subnet_of(addr: str, interfaces: list[tuple[str, ipaddress.IPv4Interface]]) -> str:
    """The CIDR of the interface holding ``addr`` (the master's address on the head node)."""
    for _, iface in interfaces:
        if str(iface.ip) == addr:
            return str(iface.network)
    raise LaunchError(
        f"cannot tell the network of the master address {addr}: no local interface has it",
        hint="set launch.network_interface to the interface name or CIDR MPI should use (e.g. ib0 or 10.0.0.0/16)",
    )


def _run_text(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def with_ops(run: Path, spec: JobSpec, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``TORCH_EXTENSIONS_DIR`` at the shared op cache, the job's DeepSpeed ops built there.

    The cache is keyed by the node's CPU (``ds_ops.cache_key``): on a partition of mixed CPU types each type
    has its own folder. One task per node builds what its folder lacks, under the folder's lock: the first
    node of each type builds, the others of that type wait for it; no rank compiles (``hpcft.node.ds_ops``).
    """
    names = ops.job_ops(spec, run, ops.node_has_cuda())
    directory = ops.ops_dir(run.parent, env)
    env = {**env, ops.ENV: str(directory)}
    todo = ops.missing(directory, names)
    if not todo:
        return env
    node = node_name(env)
    if ClusterEnv.from_mapping(env).local_id == 0:
        ops.build(directory, todo, node_python(spec), say=lambda message: print(f"hpcft node {node}: {message}",
                                                                                flush=True))  # fmt: skip
    else:
        print(f"hpcft node {node}: waiting for this node's build of {', '.join(todo)}", flush=True)
        ops.wait_for(directory, todo)
    return env


def exec_node(run: Path) -> None:
    """Prepare, write the launcher's files, and replace this process with the launcher."""
    try:
        spec = read_spec(run, node_name(os.environ))
        env = with_ops(run, spec, dict(os.environ))
        cmd, restarts, env = prepare(run, env, spec)
    except HpcftError as e:
        # Goes to the job's output; a non-zero exit makes srun end every node's task at once. The FATAL
        # marker tells after-job not to requeue, for what the same node would meet again; a transient
        # failure (DNS, ssh, a late peer) is a failure like a crash, retried within run.max_failures.
        transient = isinstance(e, TransientLaunchError)
        print(f"hpcft node: preflight failed{' (a rerun may pass)' if transient else ''}: {e}", file=sys.stderr,
              flush=True)  # fmt: skip
        if not transient and (run / SPEC_FILE).is_file():
            lifecycle.mark_fatal(run, f"preflight failed on {node_name(os.environ)}: {e.message}")
        sys.exit(3)
    for name, text in cmd.files.items():
        store.write_atomic(run / name, text)
    env = {**env, **cmd.env}
    print(f"hpcft node {node_name(os.environ)}: {' '.join(cmd.argv)}", flush=True)
    os.chdir(run)
    if ClusterEnv.from_mapping(env).in_slurm and launchers.get(spec.launch.launcher).shape != "per_rank":
        if restarts.count:
            print(f"hpcft node {node_name(env)}: in-job restarts: {restarts.why}", flush=True)
        watchdog = Watchdog(run, spec, env) if watched(spec, env) else None
        env = {**env, **watchdog.ranks_env()} if watchdog else env
        sys.exit(supervise(run, cmd.argv, env, restarts.count if restarts.by == "hpcft" else 0, watchdog))
    os.execvpe(cmd.argv[0], list(cmd.argv), env)  # a rank itself (srun launcher: SIGTERM reaches it), or local


def watched(spec: JobSpec, env: Mapping[str, str]) -> bool:
    """Whether the ranks publish heartbeats for a watcher on their node: a SLURM job with ``run.hang_timeout``.
    The agent watches them where it supervises a launcher; ``hpcft node-watch`` where no agent runs beside them
    (the other nodes of a head-node launcher; every node of the ``srun`` launcher, whose ranks are step tasks)."""
    return bool(spec.run.hang_timeout) and ClusterEnv.from_mapping(env).in_slurm


def watch_node(run: Path) -> None:
    """``hpcft node-watch``: watch this node's ranks where no ``hpcft node`` runs beside them.

    A head-node launcher starts the other nodes' ranks over ssh, in no step of theirs; the ``srun`` launcher's
    ranks are step tasks of their own, every one. The batch script (or submitit's first task) starts this as a
    step of its own on those nodes (``--overlap``), the same watchdog in a process of its own (node 0's, under
    ``srun``, records hangs and judges speeds), until the script ends it after the launcher (SIGUSR1: srun passes
    it on, where a SIGTERM to srun kills the step's tasks) or SLURM does (SIGTERM at preemption, time limit).
    """
    import signal
    import threading

    spec = read_spec(run, node_name(os.environ))
    if not spec.run.hang_timeout:
        return
    ended = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, lambda *_: ended.set())
    watchdog = Watchdog(run, spec, dict(os.environ), watch_only=True)
    watchdog.start()
    ended.wait()
    watchdog.stop()


def supervise(run: Path, argv: tuple[str, ...], env: dict[str, str], restarts: int = 0,
              watchdog: Watchdog | None = None) -> int:  # fmt: skip
    """Run the launcher as a child and turn SLURM's SIGTERM into a checkpoint request; its exit code.

    A launcher that fails is run again, up to ``restarts`` times, unless a rerun cannot help
    (``should_rerun``): its ranks continue from the newest complete checkpoint within seconds, where
    a requeue would wait for SLURM's requeue hold and the queue.

    On priority preemption SLURM sends SIGTERM to the process it started on each node (this one)
    and, after the partition's GraceTime, SIGTERM again and then SIGKILL (``docs/facts.md``).
    Had this process exec'd torchrun, torchrun would forward the SIGTERM and kill the workers
    (pytorch#119856) and the grace time would go unused. Here the first SIGTERM writes
    ``RUN/PREEMPT`` — the ranks checkpoint at their next step and exit, the launcher ends by itself —
    and a second one is passed on to the launcher.

    ``watchdog`` watches the ranks' heartbeats meanwhile: it kills hung ranks (after taking their stacks),
    and the launcher restarts them like crashed ones (``hpcft.node.watchdog``).
    """
    import signal
    import subprocess

    seen: list[int] = []
    proc: subprocess.Popen | None = None

    def on_term(signum, frame) -> None:
        seen.append(signum)
        if len(seen) == 1:
            print(f"hpcft node {node_name(env)}: SIGTERM (preemption, time limit or cancel): asking the ranks "
                  "to checkpoint at their next step", flush=True)  # fmt: skip
            lifecycle.ask_to_checkpoint(run, lifecycle.SIGTERM, env)
        elif proc is not None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)  # before the child exists: no window without the handler
    if watchdog is not None:
        watchdog.start()
    while True:
        proc = subprocess.Popen(list(argv), env=env)
        rc = exit_status(proc.wait())
        if restarts <= 0 or not should_rerun(run, rc, bool(seen)):
            if watchdog is not None:
                watchdog.stop()
            if rc == 0:
                end_without_lost_node(run, env)
            return rc
        restarts -= 1
        print(f"hpcft node {node_name(env)}: the launcher failed with {rc}; restarting every rank in this job "
              f"from the newest checkpoint ({restarts} restart(s) left)", flush=True)  # fmt: skip


BATCH_PID_ENV = "HPCFT_BATCH_PID"  # the batch script's shell, on the first node (sbatch_templates/per_node.sbatch.j2)


def end_without_lost_node(run: Path, env: Mapping[str, str]) -> bool:
    """On the first node, where the ranks left after a node loss are done (finished, or saved for the requeue):
    tell the batch script not to wait for the lost node's task (SIGUSR2). srun waits for it until SLURM marks the
    node DOWN, SlurmdTimeout after the loss (300 s by default), with the job's other nodes idle meanwhile."""
    import signal

    cluster, pid = ClusterEnv.from_mapping(env), env.get(BATCH_PID_ENV, "")
    if cluster.node_rank != 0 or not pid.isdigit() or not cluster.job_id:
        return False
    spec = store.load_run_spec(run)
    restart = int(env.get("SLURM_RESTART_COUNT") or 0)
    if not store.world_shrunk(store.read_state(run), cluster.job_id, restart, spec.ranks):
        return False
    print(f"hpcft node {node_name(env)}: the ranks left after a node loss are done: the job ends now, without "
          "waiting for SLURM to notice the lost node", flush=True)  # fmt: skip
    try:
        os.kill(int(pid), signal.SIGUSR2)
    except OSError:  # another PID namespace (a container): SLURM ends the step once it marks the node DOWN
        return False
    return True


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def should_rerun(run: Path, rc: int, signalled: bool) -> bool:
    """Whether a failed launcher is worth running again in this job: not after a signal or with a stop marker.

    FATAL: the same error again; FINISHED: nothing left; PREEMPT/REQUEUE: the job is ending anyway.
    """
    env = os.environ
    ended = lifecycle.fatal_reason(run) is not None or lifecycle.finished_step(run) is not None
    ending = lifecycle.checkpoint_asked(run, env) is not None or lifecycle.saved_for_requeue(run, env) is not None
    return rc != 0 and not signalled and not ended and not ending


def node_python(spec: JobSpec) -> str:
    """The ranks' python: ``launch.python``; in a container the image's, which runs this agent."""
    return sys.executable if spec.launch.container.enabled else (spec.launch.python or sys.executable)
