"""Tools around jobs: `hpcft config` (accelerate YAML), `hpcft doctor` (cluster readiness), `hpcft ops build`."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import RUNS_DIR_HELP, Number, _console, _handle_errors, cluster_option, main
from hpcft.errors import HpcftError


def _state_printer():
    """A poll callback printing the job state (to stderr) whenever it changes."""
    last = [None]

    def show(st) -> None:
        if st.state != last[0]:
            click.echo(f"  [{time.strftime('%H:%M:%S')}] {st.state}", err=True)
            last[0] = st.state

    return show


def _question_options(fn):
    """One ``--flag`` per question of ``hpcft.accel_config.QUESTIONS``."""
    from hpcft.tools.accel_config import QUESTIONS

    types = {"int": click.IntRange, "float": Number, "bool": click.BOOL, "str": str}
    for q in reversed(QUESTIONS):
        kind = click.Choice(q.choices) if q.kind == "choice" else types[q.kind]
        if q.kind in ("int", "float"):
            kind = kind(min=q.low, max=q.high)
        fn = click.option(f"--{q.key.replace('_', '-')}", q.key, type=kind, default=None, help=q.prompt)(fn)
    return fn


@main.command("config")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the accelerate YAML to write")
@click.option("--non-interactive", is_flag=True, help="never prompt: unanswered questions take their defaults")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@_question_options
@_handle_errors
def config_cmd(out: str, non_interactive: bool, force: bool, **given) -> None:
    """Write an accelerate config YAML (MULTI_GPU, DEEPSPEED or FSDP) for `--launcher accelerate`.

    Answers come from the flags; at a terminal, every other question that applies is asked the way
    `accelerate config` asks it. hpcft passes machine rank, main process address/port and process
    counts from the SLURM allocation at launch, overriding the file's.
    """
    from hpcft.tools import accel_config

    answers = {k: v for k, v in given.items() if v is not None}
    if not non_interactive and sys.stdin.isatty():
        answers = accel_config.ask(answers, _prompt, on_error=lambda m: click.secho(m, fg="red", err=True))
    _write_accelerate_yaml(Path(out), accel_config.to_config(answers), force)


def _prompt(q) -> str:
    kind = click.Choice(q.choices) if q.kind == "choice" else None
    default = ("yes" if q.default else "no") if q.kind == "bool" else q.default
    return click.prompt(q.prompt, default=default, type=kind, show_choices=bool(q.choices))


def _write_accelerate_yaml(out: Path, config: dict, force: bool) -> None:
    import yaml

    if out.exists() and not force:
        raise HpcftError(f"{out} exists", hint="pass --force to overwrite it")
    if not out.parent.is_dir():
        raise HpcftError(f"--out {out}: the directory {out.parent} does not exist", hint=f"mkdir -p {out.parent}")
    out.write_text("# Written by `hpcft config`; use: hpcft submit JOB --launcher accelerate "
                   f"--accelerate-config {out}\n" + yaml.safe_dump(config, sort_keys=False))  # fmt: skip
    click.echo(f"wrote {out} ({config['distributed_type']})")
    click.echo(f"use it: hpcft submit JOB --launcher accelerate --accelerate-config {out}")


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False))
@click.option("--nodes", type=int, help="nodes to check [default: the job file's, else 2]")
@click.option("--gpus-per-node", type=int, help="GPUs per node to expect [default: the job file's]")
@click.option("--partition", help="SLURM partition")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--profile", type=click.Path(dir_okay=False), help="cluster profile YAML (below the job file)")
@click.option("--check-nvme", is_flag=True, help="also check the NVMe offload path (builds async_io: minutes)")
@click.option(
    "--timeout", type=Number(min=1), default=600, show_default=True, help="seconds before the probe is cancelled"
)
@click.option("--shared-dir", multiple=True, help="another directory all nodes must share ({node} = node name)")
@click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE", help="set any key of the job file")
@cluster_option
@_handle_errors
def doctor(job_file, nodes, gpus_per_node, partition, runs_dir, profile, check_nvme, timeout, shared_dir, overrides,
           cluster):  # fmt: skip
    """Submit a small probe job on N nodes and check they can run JOB_FILE; exit 1 on any failure.

    Checks rendezvous and an all-reduce (latency, bandwidth), that the run directory and the HF
    cache are one shared filesystem (write, read, rename, lock), the NVMe path (--check-nvme),
    GPU count, and equal Python/torch/hpcft versions on every node. With --cluster the job file and
    what it names are copied there first, as for submit.
    """
    if cluster is not None:
        from hpcft.remote import submit as remote

        options = {"--nodes": nodes, "--gpus-per-node": gpus_per_node, "--partition": partition,
                   "--runs-dir": runs_dir, "--timeout": timeout}  # fmt: skip
        argv = [f for name, value in options.items() if value is not None for f in (name, str(value))]
        argv += ["--check-nvme"] * check_nvme + [f for d in shared_dir for f in ("--shared-dir", d)]
        sys.exit(remote.run_staged(cluster, "doctor", job_file, overrides, profile, argv, click.echo))
    from hpcft.backends import actions as backends
    from hpcft.tools import doctor as doc

    flags = {
        "resources.nodes": nodes or (None if job_file else 2),
        "resources.gpus_per_node": gpus_per_node,
        "resources.partition": partition,
        "run.runs_dir": runs_dir,
    }
    p = doc.plan_doctor(job_file, flags, overrides, profile, timeout, python=sys.executable, now=datetime.now(),
                        check_nvme=check_nvme, shared_dirs=shared_dir)  # fmt: skip
    run, job_id = backends.submit(p)
    click.echo(f"doctor: probe job {job_id} on {p.spec.resources.nodes} node(s); run dir {run}", err=True)
    final = doc.wait(run, timeout, _state_printer())
    rows = doc.collect(run, final.state, final.nodelist)
    _console(200).print(doc.doctor_table(rows))
    sys.exit(1 if doc.failed(rows) else 0)


@main.group("ops")
def ops_group() -> None:
    """DeepSpeed's C++ ops, built once into the shared cache every node and job uses."""


@ops_group.command("build")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--op", "op_names", multiple=True, type=click.Choice(["shm_comm", "async_io", "cpu_adam", "fused_adam"]),
              help="ops to build [default: those a node like this one may need]")  # fmt: skip
@_handle_errors
def ops_build(runs_dir: str | None, op_names: tuple[str, ...]) -> None:
    """Build DeepSpeed's ops for this machine's DeepSpeed, torch and CPU, once (minutes on few cores).

    Run it on a login node of the compute nodes' CPU type (or inside a job: `srun -N1 hpcft ops build`)
    before the first multi-node job; jobs then start without compiling. The cache is
    RUNS_DIR/.cache/torch_extensions/<versions-cpu>, or $TORCH_EXTENSIONS_DIR if set.
    """
    import os

    from hpcft.cli.base import _runs_dir
    from hpcft.node import ds_ops as ops

    names = op_names or ops.default_ops(ops.node_has_cuda())
    click.echo(f"building DeepSpeed ops {', '.join(names)} (each new one takes minutes) ...", err=True)
    t0 = time.monotonic()
    directory, built = ops.prebuild(_runs_dir(runs_dir), names, os.environ)
    done = f"built {', '.join(built)} in {time.monotonic() - t0:.0f} s" if built else "all were built already"
    click.echo(f"DeepSpeed ops in {directory}: {done}")
