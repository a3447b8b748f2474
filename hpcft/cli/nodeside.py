"""The hidden commands the batch script runs on the nodes: node, node-watch, begin-job, warn-timer, after-job."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcft.cli.base import _handle_errors, main


@main.command(hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def node(run_dir: str) -> None:
    """Start this node's workers (run by srun once per node)."""
    from hpcft.node.agent import exec_node

    exec_node(Path(run_dir).resolve())


@main.command("node-watch", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def node_watch(run_dir: str) -> None:
    """Watch this node's ranks started over ssh by a head-node launcher (run by srun on the other nodes)."""
    from hpcft.node.agent import watch_node

    watch_node(Path(run_dir).resolve())


@main.command("begin-job", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def begin_job(run_dir: str) -> None:
    """Record this job in the run and check it may train (run first by the batch script)."""
    import os

    from hpcft.node.begin_job import begin_job as record_and_check

    sys.exit(record_and_check(Path(run_dir).resolve(), os.environ))


@main.command("warn-timer", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def warn_timer(run_dir: str) -> None:
    """Ask the ranks to checkpoint at the time limit minus the lead the last save needs (run by the batch script)."""
    import os

    from hpcft.node.warn_timer import run_timer

    line = run_timer(Path(run_dir).resolve(), os.environ)
    if line:
        click.echo(line)


@main.command("after-job", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("rc", type=int)
@_handle_errors
def after_job(run_dir: str, rc: int) -> None:
    """Decide finished / requeue / fail when the launcher ends (run by the batch script)."""
    from hpcft.node.after_job import after_job as decide_and_apply

    sys.exit(decide_and_apply(Path(run_dir).resolve(), rc).exit_code)
