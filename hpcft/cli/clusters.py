"""Clusters by name, for working from a workstation: ``hpcft clusters`` (list and check), ``add``, ``remove``."""

from __future__ import annotations

import json
import shutil
import sys

import click

from hpcft.cli.base import _console, _handle_errors, main


def _pairs(ctx, param, values) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", ctx, param)
        out[name] = value
    return out


@main.group("clusters", invoke_without_command=True)
@click.option("--no-check", is_flag=True, help="list only; do not connect to each cluster")
@click.pass_context
@_handle_errors
def clusters_group(ctx, no_check: bool) -> None:
    """Your clusters by name, for `--cluster NAME` on every command (from a workstation, over SSH).

    \b
    Without a subcommand: list them and check each (reachable, its hpcft's version, sbatch there).
      hpcft clusters add mycluster --host me@login.example.org --runs-dir /scratch/me/hpcft-runs \\
          --hpcft /home/me/venv/bin/hpcft
      hpcft submit job.yaml --cluster mycluster --nodes 2 --wait
      hpcft status --cluster mycluster            # or export HPCFT_CLUSTER=mycluster
    The host is anything ssh accepts (an alias of ~/.ssh/config, with its ProxyJump, keys, agent).
    The file: $XDG_CONFIG_HOME/hpcft/clusters.yaml (default ~/.config/hpcft/clusters.yaml).
    """
    if ctx.invoked_subcommand is not None:
        return
    from hpcft.remote import check, clusters

    config = clusters.load()
    path = clusters.config_path()
    if not config.clusters:
        click.echo(f"no clusters yet ({path}); add one: hpcft clusters add NAME --host HOST --runs-dir DIR")
        return
    from rich.table import Table

    table = Table(title=f"clusters ({path})")
    for column in ("name", "host", "runs dir", "hpcft there", "sbatch", "runs from here"):
        table.add_column(column)
    counts = {name: len(runs) for name, runs in clusters.runs_by_cluster().items()}
    failed = False
    for name, cluster in config.clusters.items():
        label = f"{name} (default)" if name == config.default else name
        if no_check:
            table.add_row(label, cluster.host, cluster.runs_dir, "-", "-", str(counts.get(name, 0)))
            continue
        result = check.check(cluster)
        failed |= not result.ok
        table.add_row(label, cluster.host, cluster.runs_dir, result.version_text, result.sbatch_text,
                      str(counts.get(name, 0)))  # fmt: skip
    _console().print(table)
    if failed:
        sys.exit(1)


@clusters_group.command("add")
@click.argument("name")
@click.option("--host", required=True, help="what you give ssh: user@host, or an alias of ~/.ssh/config")
@click.option("--runs-dir", required=True, help="the runs directory on the cluster's shared filesystem (absolute)")
@click.option("--hpcft", "hpcft_path", default="hpcft", show_default=True, help="the hpcft to run on the cluster")
@click.option("--profile", help="a cluster profile YAML on the cluster (absolute path)")
@click.option("--staging", help="where job inputs are copied [default: RUNS_DIR/.staging]")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="NAME=VALUE", callback=_pairs,
              help="an extra `ssh -o NAME=VALUE` (e.g. IdentityFile=~/.ssh/lab)")  # fmt: skip
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", callback=_pairs,
              help="set for every remote command (e.g. SLURM_CONF=...)")  # fmt: skip
@click.option("--default", "make_default", is_flag=True, help="make it the default (`--cluster default`)")
@click.option("--replace", is_flag=True, help="replace a cluster of that name")
@_handle_errors
def clusters_add(name, host, runs_dir, hpcft_path, profile, staging, ssh_options, env, make_default, replace) -> None:
    """Add (or with --replace, change) the cluster NAME. Nothing is contacted: `hpcft clusters` checks it."""
    import dataclasses

    from hpcft.errors import HpcftError
    from hpcft.remote import clusters

    config = clusters.load()
    if name in config.clusters and not replace:
        raise HpcftError(f"a cluster named {name!r} exists already", hint="add --replace to change it")
    entry = {"host": host, "runs_dir": runs_dir, "hpcft": hpcft_path, "profile": profile, "staging": staging,
             "ssh_options": ssh_options or None, "env": env or None}  # fmt: skip
    cluster = clusters.parse_cluster(name, {k: v for k, v in entry.items() if v is not None}, "the options")
    new = dataclasses.replace(config, clusters={**config.clusters, name: cluster},
                              default=name if make_default else config.default)  # fmt: skip
    path = clusters.save(new)
    click.echo(f"{name}: {host}, runs in {runs_dir} ({path}); check it: hpcft clusters")


@clusters_group.command("remove")
@click.argument("name")
@_handle_errors
def clusters_remove(name) -> None:
    """Forget the cluster NAME (nothing on the cluster is touched)."""
    import dataclasses

    from hpcft.errors import HpcftError
    from hpcft.remote import clusters, ssh

    config = clusters.load()
    if name not in config.clusters:
        raise HpcftError(f"no cluster named {name!r}", hint="hpcft clusters lists them")
    ssh.close(config.clusters[name])
    rest = {k: v for k, v in config.clusters.items() if k != name}
    default = None if config.default == name else config.default
    clusters.save(dataclasses.replace(config, clusters=rest, default=default))
    click.echo(f"removed {name}")


@main.command("remote-info", hidden=True)
def remote_info() -> None:
    """What a workstation asks this hpcft before it sends a job: versions and whether sbatch is here (JSON)."""
    from hpcft import __version__
    from hpcft.spec.io import SPEC_FORMAT

    click.echo(json.dumps({"version": __version__, "spec_format": SPEC_FORMAT, "sbatch": shutil.which("sbatch"),
                           "python": sys.executable}))  # fmt: skip
