"""The ``hpcft`` group and what every command shares: error handling, the console, the runs dir."""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys

import click

from hpcft import __version__
from hpcft.errors import HpcftError

RUNS_DIR_HELP = "directory holding runs [default: $HPCFT_RUNS_DIR or ./hpcft-runs]"


class Number(click.FloatRange):
    """A float option in a range that is also finite: Click's FloatRange lets ``nan`` through (every
    comparison with NaN is false) and ``inf``, which end in a traceback further down."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


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


def _console(min_width: int = 160):
    """A Rich console; when stdout is not a terminal (a pipe, a file), wide enough not to squash tables."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=max(shutil.get_terminal_size().columns, min_width))


def _runs_dir(value: str | None) -> str:
    from hpcft.spec.layering import default_runs_dir

    return value or default_runs_dir()


class HpcftGroup(click.Group):
    """Click's group, keeping each command's own argv as typed: ``--cluster`` sends it to the cluster unchanged."""

    def resolve_command(self, ctx, args):
        ctx.meta["hpcft.args"] = list(args[1:])
        return super().resolve_command(ctx, args)


CLUSTER_HELP = "run it on this cluster over SSH [default: $HPCFT_CLUSTER; `hpcft clusters` lists them]"


def cluster_option(fn):
    """``--cluster NAME`` (or ``$HPCFT_CLUSTER``): the command's value ``cluster`` is the ``Cluster`` or None."""

    def to_cluster(ctx, param, value):
        if value is None and not os.environ.get("HPCFT_CLUSTER"):
            return None
        from hpcft.remote import clusters

        try:
            return clusters.chosen(value, clusters.load())
        except HpcftError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return click.option("--cluster", metavar="NAME", callback=to_cluster, help=CLUSTER_HELP)(fn)


def _env_from_stdin(ctx, param, value: bool) -> None:
    """A workstation's ``launch.env_passthrough`` values (a JSON object on stdin) into this process's environment,
    which sbatch passes to the job: secrets by name, their values never in an argv or a file."""
    if not value:
        return
    import json

    try:
        values = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        raise click.UsageError("--env-from-stdin: stdin is not a JSON object") from None
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise click.UsageError("--env-from-stdin: expected a JSON object of names to strings")
    os.environ.update(values)


def env_from_stdin_option(fn):
    """The hidden ``--env-from-stdin`` of the commands a workstation submits through (submit, sweep, resume)."""
    return click.option("--env-from-stdin", is_flag=True, hidden=True, expose_value=False, callback=_env_from_stdin,
                        help="a JSON object of variables on stdin (secrets)")(fn)  # fmt: skip


def forwardable(*, reconnect: bool = False):
    """A command that runs as typed on a cluster when ``--cluster`` names one (``hpcft.remote.forward``);
    ``reconnect``: it only reads, and is started again when the connection drops (``logs -f``, ``wait``)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, cluster=None, **kwargs):
            if cluster is None:
                return fn(*args, **kwargs)
            from hpcft.remote import forward

            ctx = click.get_current_context()
            sys.exit(forward.run_here(cluster, ctx.info_name, ctx.meta.get("hpcft.args", []), reconnect=reconnect))

        return cluster_option(_handle_errors(wrapper))

    return deco


@click.group(cls=HpcftGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
      hpcft submit job.yaml --cluster NAME ...  # from a workstation over ssh (`hpcft clusters`)
    """
    if debug:
        os.environ["HPCFT_DEBUG"] = "1"
