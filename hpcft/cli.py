"""The ``hpcft`` command line: each command parses, calls the library, prints. No decisions here.

Heavy libraries (torch, transformers, deepspeed) are never imported on this path; ``init-demo``
loads ``hpcft.train`` only when it runs.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from hpcft import __version__
from hpcft.errors import HpcftError
from hpcft.spec import BACKENDS, LAUNCHERS

RUNS_DIR_HELP = "directory holding runs [default: $HPCFT_RUNS_DIR or ./hpcft-runs]"


def _handle_errors(fn):
    """Turn ``HpcftError`` into a clean message and exit 1 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HpcftError as e:
            if os.environ.get("HPCFT_DEBUG"):
                raise
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def _runs_dir(value: str | None) -> str:
    from hpcft.config import default_runs_dir

    return value or default_runs_dir()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcft")
@click.option("--debug", is_flag=True, help="show tracebacks for errors")
def main(debug: bool) -> None:
    """Run LLM fine-tuning jobs on SLURM clusters.

    \b
    Typical use:
      hpcft init-demo demo                      # tiny model + data + demo/job.yaml
      hpcft plan demo/job.yaml --nodes 2        # show the script and launch commands
      hpcft submit demo/job.yaml --nodes 2 --wait
      hpcft status                              # every run: state, step, loss
      hpcft logs RUN -f                         # follow rank 0's output
    """
    if debug:
        os.environ["HPCFT_DEBUG"] = "1"


def job_options(fn):
    """The curated flags shared by ``plan`` and ``submit`` (everything else: ``-o key=value``)."""
    options = [
        click.argument("job_file", type=click.Path(dir_okay=False)),
        click.argument("script_args", nargs=-1, type=click.UNPROCESSED),
        click.option("--nodes", type=int, help="number of nodes (resources.nodes)"),
        click.option("--gpus-per-node", type=int, help="GPUs per node; processes per node on CPU-only machines"),
        click.option("--zero", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (train.zero)"),
        click.option("--launcher", type=click.Choice(LAUNCHERS), help="how each node starts its processes"),
        click.option("--backend", type=click.Choice(BACKENDS), help="how the job reaches the nodes"),
        click.option("--time", "time_limit", help="time limit, sbatch format (e.g. 4:00:00)"),
        click.option("--partition", help="SLURM partition"),
        click.option("--runs-dir", help=RUNS_DIR_HELP),
        click.option("--profile", type=click.Path(dir_okay=False), help="cluster profile YAML (below the job file)"),
        click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE", help="set any key, e.g. -o train.lr=1e-4"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load_plan(
    job_file,
    script_args,
    nodes,
    gpus_per_node,
    zero,
    launcher,
    backend,
    time_limit,
    partition,
    runs_dir,
    profile,
    overrides,
):
    from hpcft import config, plan
    from hpcft.slurm import client

    script = str(Path(script_args[0]).resolve()) if script_args else None
    flags = {
        "resources.nodes": nodes,
        "resources.gpus_per_node": gpus_per_node,
        "resources.time": time_limit,
        "resources.partition": partition,
        "train.zero": zero,
        "launch.launcher": launcher,
        "launch.backend": backend,
        "run.runs_dir": runs_dir,
        "launch.script": script,
        "launch.script_args": list(script_args[1:]) if script_args else None,
    }
    spec = config.load_job(job_file, profile=profile, overrides=overrides, flags=flags)
    spec = plan.resolve_backend(spec, client.sbatch_available())
    config.check_inputs(spec)
    return plan.make_plan(spec, python=sys.executable, now=datetime.now())


@main.command("plan")
@job_options
@_handle_errors
def plan_cmd(**kwargs) -> None:
    """Show what `submit` would do, without running anything.

    Prints the submit command, the batch script, node 0's launch command and the rendezvous.
    Arguments after `--` name a user script to run instead of the hpcft trainer.
    """
    _print_plan(_load_plan(**kwargs))


def _print_plan(p) -> None:
    from hpcft.slurm.script import shell_join

    click.secho(f"# run directory: {p.run_dir}   (backend: {p.backend})", bold=True)
    click.secho("# submit command:", bold=True)
    click.echo(shell_join(p.submit_argv))
    for name, text in p.files.items():
        click.secho(f"# --- {name} ---", bold=True)
        click.echo(text.rstrip("\n"))
    click.secho("# --- node 0 launch command ---", bold=True)
    for key, value in sorted(p.node_preview.env.items()):
        click.echo(f"{key}={value}")
    click.echo(shell_join(p.node_preview.argv))
    click.secho("# --- rendezvous ---", bold=True)
    for key, value in p.rendezvous.items():
        click.echo(f"{key}: {value}")


@main.command()
@job_options
@click.option("--dry-run", is_flag=True, help="print the plan and stop (same as `hpcft plan`)")
@click.option("--wait", is_flag=True, help="return when the job ends, with its exit status")
@_handle_errors
def submit(dry_run: bool, wait: bool, **kwargs) -> None:
    """Submit a fine-tuning job described by JOB_FILE.

    \b
    Examples:
      hpcft submit job.yaml --nodes 4 --gpus-per-node 8 --time 12:00:00
      hpcft submit job.yaml -o train.lr=1e-4 -o train.max_steps=500
      hpcft submit job.yaml --nodes 2 -- my_train.py --epochs 3
    """
    from hpcft import backends

    p = _load_plan(**kwargs)
    if dry_run:
        _print_plan(p)
        return
    run, job_id = backends.submit(p)
    click.echo(f"submitted {run.name} as job {job_id} ({p.backend})")
    click.echo(f"  run dir: {run}")
    click.echo(f"  watch:   hpcft status {run.name}   |   hpcft logs {run.name} -f")
    if wait:
        sys.exit(_wait(run))


def _wait(run: Path) -> int:
    from hpcft import monitor

    last = [None]

    def show(st) -> None:
        line = f"{st.state} step {st.step if st.step is not None else '-'}/{st.total_steps or '?'}"
        if st.loss is not None:
            line += f" loss {st.loss:.4f}"
        if line != last[0]:
            click.echo(f"  [{time.strftime('%H:%M:%S')}] {line}", err=True)
            last[0] = line

    final = monitor.wait_for(run, show)
    ok = final.state == "COMPLETED"
    click.secho(f"{run.name}: {final.state}", fg="green" if ok else "red")
    return 0 if ok else 1


@main.command(hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def node(run_dir: str) -> None:
    """Start this node's workers (run by srun once per node)."""
    from hpcft.node import exec_node

    exec_node(Path(run_dir).resolve())


@main.command("init-demo")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--hidden-size", default=128, show_default=True, help="model width (512 gives ~8M parameters)")
@_handle_errors
def init_demo(directory: str, hidden_size: int) -> None:
    """Build a tiny Llama model, a tokenizer, a dataset and DIRECTORY/job.yaml.

    Everything is made locally (no model hub). Then: hpcft submit DIRECTORY/job.yaml --wait
    """
    from hpcft.train.demo import build_demo

    job = build_demo(Path(directory), hidden_size=hidden_size)
    click.echo(f"wrote {job}\nnext: hpcft submit {job} --wait")


@main.command("list")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@_handle_errors
def list_cmd(runs_dir: str | None) -> None:
    """List runs, oldest first, with their state."""
    _status_table(None, runs_dir, as_json=False)


@main.command()
@click.argument("run", required=False)
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_handle_errors
def status(run: str | None, runs_dir: str | None, as_json: bool) -> None:
    """State, job ids, nodes, elapsed time, step/total and loss of one run or all runs."""
    _status_table(run, runs_dir, as_json)


def _status_table(ref: str | None, runs_dir: str | None, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from hpcft import monitor, runs

    base = _runs_dir(runs_dir)
    paths = [runs.find_run(ref, base)] if ref else runs.list_runs(base)
    rows = monitor.run_statuses(paths)
    if as_json:
        data = [r.to_dict() for r in rows]
        click.echo(json.dumps(data[0] if ref else data, indent=2))
        return
    if not rows:
        click.echo(f"no runs under {base}")
        return
    table = Table("run", "state", "job", "nodes", "elapsed", "step", "loss", "checkpoint")
    for r in rows:
        step = f"{r.step if r.step is not None else '-'}/{r.total_steps or '?'}"
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        table.add_row(r.run, r.state, r.job_id, r.nodes, r.elapsed, step, loss, r.checkpoint or "-")
    Console().print(table)


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the run ends")
@click.option("--rank", type=int, help="show this rank's log instead of the job output")
@_handle_errors
def logs(run: str, runs_dir: str | None, follow: bool, rank: int | None) -> None:
    """Show a run's output: the newest job's output (rank 0 and launchers), or one rank's log."""
    from hpcft import logs as logs_mod
    from hpcft import runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    for chunk in logs_mod.stream(path, rank=rank, follow=follow):
        click.echo(chunk, nl=False)


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@_handle_errors
def cancel(run: str, runs_dir: str | None) -> None:
    """Cancel a run's job (scancel, or stop the local process group)."""
    from hpcft import backends, runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    job_id = backends.cancel(path)
    click.echo(f"cancelled job {job_id} of {path.name}")


if __name__ == "__main__":
    main()
