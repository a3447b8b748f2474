"""Commands on existing runs: list, status, logs, plot, cancel, resume, export."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import (
    RUNS_DIR_HELP,
    Number,
    _console,
    _handle_errors,
    _runs_dir,
    cluster_option,
    env_from_stdin_option,
    forwardable,
    main,
)
from hpcft.cli.jobs import _wait


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option(
    "--nodes",
    type=int,
    help="nodes for the new job (another count: the global batch is kept, ZeRO "
    "shards converted to DeepSpeed's universal checkpoint)",
)
@click.option("--checkpoint", type=int, metavar="STEP", help="continue from checkpoint-STEP (default: newest complete)")
@click.option(
    "-o", "overrides", multiple=True, metavar="KEY=VALUE", help="change any key, e.g. -o train.max_steps=2000"
)
@click.option("--wait", is_flag=True, help="return when the job ends, with its exit status")
@env_from_stdin_option
@cluster_option
@_handle_errors
def resume(run: str, runs_dir: str | None, nodes: int | None, checkpoint: int | None, overrides, wait: bool,
           cluster) -> None:  # fmt: skip
    """Continue RUN in a new job from its newest complete checkpoint (or --checkpoint STEP)."""
    from hpcft.backends import actions as backends

    if cluster is not None:  # on the cluster, the run's secrets (env_passthrough) from this shell
        from hpcft.remote import forward

        sys.exit(forward.resume(cluster, run, runs_dir, click.get_current_context().meta.get("hpcft.args", [])))
    from hpcft.plan import resume as resume_mod
    from hpcft.rundir import store

    path = store.find_run(run, _runs_dir(runs_dir))
    backends.refuse_if_live(path)
    rp = resume_mod.plan_resume(path, overrides=overrides, flags={"resources.nodes": nodes},
                                checkpoint=checkpoint, python=sys.executable, now=datetime.now())  # fmt: skip
    for note in rp.notes:
        click.secho(note, fg="cyan", err=True)
    job_id = backends.resume(rp)
    start = f"{rp.checkpoint.path.name}" if rp.checkpoint else "its own checkpoints (user script)"
    click.echo(f"resumed {path.name} as job {job_id} from {start}")
    if wait:
        sys.exit(_wait(path))


@main.command()
@click.argument("run")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="new directory for the model")
@click.option("--checkpoint", type=int, metavar="STEP", help="export checkpoint-STEP (default: newest complete)")
@click.option("--merge-lora", is_flag=True, help="merge a LoRA adapter into the base model")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@forwardable()
def export(run: str, out: str, checkpoint: int | None, merge_lora: bool, dtype: str, runs_dir: str | None) -> None:
    """Write a checkpoint of RUN as a Hugging Face model directory (ZeRO shards consolidated)."""
    from hpcft.rundir import store
    from hpcft.train.export import export as export_model

    path = store.find_run(run, _runs_dir(runs_dir))
    ckpt = export_model(path, Path(out), step=checkpoint, merge_lora=merge_lora, dtype=dtype)
    click.echo(f"exported {ckpt.name} of {path.name} to {out} (loads with from_pretrained)")


@main.command("list")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@forwardable()
def list_cmd(runs_dir: str | None) -> None:
    """List runs, oldest first, with their state."""
    _status_table(None, runs_dir, as_json=False)


@main.command()
@click.argument("run", required=False)
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="refresh in place until every shown run has ended (Ctrl-C stops)")
@click.option("--interval", type=Number(min=1.0), default=2.0, show_default=True, help="seconds, --watch")
@click.option("--from-squeue", is_flag=True, help="every run of yours SLURM knows (job comments), any runs dir")
@click.option("--goodput", is_flag=True, help="RUN: where its time went (queue, start-up, training, saves…)")
@forwardable()
def status(run: str | None, runs_dir: str | None, as_json: bool, watch: bool, interval: float, from_squeue: bool,
           goodput: bool) -> None:  # fmt: skip
    """State, jobs, nodes, elapsed, progress, loss, tokens/s, ETA, checkpoint and restarts of runs.

    The state comes from squeue while a job is known there and from sacct once it has ended;
    SLURM is asked once per refresh for all runs shown. For one RUN also its goodput: the share of the
    time its jobs held their nodes that trained (ETTR) and the largest loss; --goodput shows every bucket.
    """
    ref = SQUEUE if from_squeue else run
    if goodput and not isinstance(ref, str):
        raise click.UsageError("--goodput needs a RUN")
    if watch and not as_json:
        _watch_status(ref, runs_dir, interval)
    else:
        _status_table(ref, runs_dir, as_json, goodput)


SQUEUE = object()  # the runs of the user's jobs in squeue, instead of a runs directory


def _status_paths(ref, runs_dir: str | None) -> tuple[str, list[Path]]:
    from hpcft.ops import status as monitor
    from hpcft.rundir import store
    from hpcft.slurm.client import RUN_COMMENT

    if ref is SQUEUE:
        return "your jobs in squeue", monitor.squeue_runs(RUN_COMMENT)
    base = _runs_dir(runs_dir)
    return base, ([store.find_run(ref, base)] if ref else store.list_runs(base))


def _status_table(ref: str | None, runs_dir: str | None, as_json: bool, goodput: bool = False) -> None:
    from hpcft.ops import goodput as ledger
    from hpcft.ops import status as monitor

    base, paths = _status_paths(ref, runs_dir)
    rows = monitor.run_statuses(paths)
    error = monitor.row_error(rows[0]) if isinstance(ref, str) else None
    if error:
        raise error
    book = ledger.of_run(paths[0]) if isinstance(ref, str) else None
    if as_json:
        data = [r.to_dict() for r in rows]
        click.echo(json.dumps({**data[0], "goodput": book} if isinstance(ref, str) else data, indent=2))
        return
    if goodput:
        _console().print(ledger.table(book))
        return
    if not rows:
        click.echo(f"no runs under {base}")
        _remote_runs_line(ref)
        return
    _console().print(monitor.status_table(rows))
    _remote_runs_line(ref)
    for line in monitor.sweep_summaries(rows):
        click.echo(line)
    if isinstance(ref, str):
        for link in rows[0].trackers:
            click.echo(f"  curves: {link}")
        line = monitor.startup_line(rows[0].startup)
        if line:
            click.echo(f"  {line}")
        for line in monitor.health_lines(rows[0]):
            click.echo(f"  {line}")
        click.echo(f"  {ledger.summary(book)} (--goodput: every bucket)")


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@forwardable()
def sync(run: str, runs_dir: str | None) -> None:
    """Upload RUN's offline W&B segments (train.report_to: [wandb]) from a machine with internet.

    Compute nodes write W&B offline into RUN/wandb; every segment (one per start) belongs to one W&B run,
    so the uploaded curve continues across requeues and resumes. Needs `wandb` here and a login
    (WANDB_API_KEY or `wandb login`). TensorBoard files (RUN/tb) and an MLflow file store (RUN/mlruns)
    need no upload: point `tensorboard --logdir` / `mlflow ui` at them.
    """
    from hpcft.ops import sync as sync_mod
    from hpcft.rundir import store

    path = store.find_run(run, _runs_dir(runs_dir))
    segments = sync_mod.offline_segments(path)
    click.echo(f"uploading {len(segments)} offline W&B segment(s) of {path.name}")
    sys.exit(sync_mod.upload(segments))


def _remote_runs_line(ref) -> None:
    """Under a listing of this machine's runs: the runs submitted from here to clusters (this side's record, no
    connection made), and how to see their state."""
    if ref is not None:
        return
    from hpcft.remote.clusters import runs_by_cluster

    for name, runs in sorted(runs_by_cluster().items()):
        newest = ", ".join(reversed(runs[-3:])) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        click.echo(f"on cluster {name}, submitted from here: {newest}   (hpcft status --cluster {name})")


def _watch_status(ref: str | None, runs_dir: str | None, interval: float) -> None:
    """Refresh the table until every shown run is over, by the rule `--wait` and `logs -f` end by too."""
    from rich.live import Live

    from hpcft.ops import status as monitor

    base, _ = _status_paths(ref, runs_dir)

    def show(rows: list[monitor.RunStatus]) -> None:
        error = monitor.row_error(rows[0]) if isinstance(ref, str) else None
        if error:
            raise error
        live.update(monitor.status_table(rows) if rows else f"no runs under {base}", refresh=True)

    with Live(console=_console(), auto_refresh=False) as live:
        try:
            monitor.watch(lambda: _status_paths(ref, runs_dir)[1], show, interval)  # one squeue (+ sacct) a poll
        except KeyboardInterrupt:
            return


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the run ends (across requeues)")
@click.option("--rank", type=int, help="this rank's log lines (from RUN/logs/node-*.log) instead of the job output")
@click.option("--node", help="the rank-log lines of the ranks that ran on this node")
@click.option("--job", "job_id", help="this job's output (an older job of the run) instead of the newest")
@forwardable(reconnect=True)
def logs(run: str, runs_dir: str | None, follow: bool, rank: int | None, node: str | None, job_id: str | None) -> None:
    """Show a run's output: rank 0's console (the newest job's output), one rank's log, or one node's ranks."""
    from hpcft.ops import logs as logs_mod
    from hpcft.rundir import store

    path = store.find_run(run, _runs_dir(runs_dir))
    try:
        for chunk in logs_mod.stream(path, rank=rank, follow=follow, node=node, job=job_id):
            click.echo(chunk, nl=False)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@forwardable(reconnect=True)
def wait(run: str, runs_dir: str | None) -> None:
    """Return when RUN's newest job has ended: exit status 0 if it completed, else 1 (progress on stderr)."""
    from hpcft.rundir import store

    sys.exit(_wait(store.find_run(run, _runs_dir(runs_dir))))


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write [default: RUN/metrics.png]")
@cluster_option
@_handle_errors
def plot(run: str, runs_dir: str | None, out: str | None, cluster) -> None:
    """Plot train/eval loss and tokens/s against step into a PNG; restarts are dashed lines.

    Above them, the run's timeline: queue, start-up, training, saves, work redone after a fault and
    restarts, as `hpcft status RUN --goodput` sums them. With --cluster the PNG is drawn there and
    brought back [default: ./RUN.png]."""
    if cluster is not None:
        from hpcft.remote import forward

        click.echo(forward.plot(cluster, run, runs_dir, out))
        return
    from hpcft.ops import goodput
    from hpcft.ops import plot as plot_mod
    from hpcft.rundir import store

    path = store.find_run(run, _runs_dir(runs_dir))
    data = plot_mod.extract_series(store.read_metrics(path))
    spans = goodput.timeline_of_run(path)
    written = plot_mod.write_plot(data, Path(out) if out else path / "metrics.png", title=path.name, spans=spans)
    counts = f"{len(data.train_loss)} train, {len(data.eval_loss)} eval points, {len(data.restarts)} restart(s)"
    click.echo(f"wrote {written} ({counts})")


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@forwardable()
def cancel(run: str, runs_dir: str | None) -> None:
    """Cancel a run's job (scancel, or stop the local process group)."""
    from hpcft.backends import actions as backends
    from hpcft.rundir import store

    path = store.find_run(run, _runs_dir(runs_dir))
    job_id = backends.cancel(path)
    click.echo(f"cancelled job {job_id} of {path.name}")


if __name__ == "__main__":
    main()


@main.command()
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--forget", metavar="NODE", help="clear a node's record (repaired, or wrongly named)")
@forwardable()
def nodes(runs_dir: str | None, forget: str | None) -> None:
    """Nodes that recent faults named (hangs, stragglers) in this runs directory: the lemon nodes.

    Each incident weighs 1 and halves every 24 h; a node at ½ or more is a lemon: requeues and new sbatch
    jobs of this runs directory exclude it where the partition can spare it (run.avoid_lemons).
    """
    import time

    from hpcft.rundir import lemons

    base = _runs_dir(runs_dir)
    if forget:
        click.echo(f"forgot {lemons.forget(base, forget)} incident(s) of {forget}")
        return
    incidents = lemons.read_incidents(base)
    if not incidents:
        click.echo(f"no node incidents recorded in {base}")
        return
    now = time.time()
    found = set(lemons.lemons(incidents, now))
    for node, weight in sorted(lemons.weights(incidents, now).items()):
        last = max((i for i in incidents if i["node"] == node), key=lambda i: i.get("time", 0))
        ago = (now - float(last.get("time", now))) / 3600
        click.echo(f"{node}: {'LEMON' if node in found else 'ok'} (weight {weight:.2f}); last: {last.get('why')} "
                   f"in {last.get('run')}, {ago:.1f} h ago")  # fmt: skip
