"""``hpcft bench``: measurements of the user's own job on the cluster (``bench scale``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import _console, _handle_errors, main
from hpcft.cli.jobs import _load_plan, _progress_printer, job_options
from hpcft.errors import RunError


@main.group()
def bench() -> None:
    """Measure your job on the cluster before a long run."""


def _sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: node counts separated by commas, e.g. 1,2,4") from None
    if len(sizes) < 2 or sizes[0] < 1:
        raise click.BadParameter(f"{value!r}: at least two node counts of 1 or more, e.g. 1,2,4")
    return sizes


@bench.command("scale")
@click.option("--nodes", "sizes", required=True, callback=_sizes, metavar="N,N,...", help="node counts, e.g. 1,2,4")
@click.option("--steps", type=click.IntRange(min=3), default=30, show_default=True, help="optimizer steps per size")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="first steps not measured")
@click.option("--out", type=click.Path(file_okay=False), help="report directory [default: RUNS_DIR/NAME-scale]")
@lambda fn: job_options(fn, nodes=False)
@_handle_errors
def scale(sizes: list[int], steps: int, warmup: int, out: str | None, overrides, **kwargs) -> None:
    """Is it worth more nodes? Run JOB_FILE at each node count and compare throughput.

    \b
    Each size is submitted as a short run of --steps steps without checkpoints, one size after
    the other (so that they do not compete), and waited for. From each run's metrics: tokens/s after
    --warmup steps (median), speed-up over the smallest size, scaling efficiency (= per-GPU throughput
    kept) and step time. Prints a table and writes scale.json and scale.png.
      hpcft bench scale job.yaml --nodes 1,2,4 --gpus-per-node 8
      hpcft bench scale job.yaml --nodes 1,2 --steps 50 -o train.micro_batch_size=8
    """
    from hpcft.backends import actions as backends
    from hpcft.ops import scale as scale_mod
    from hpcft.ops import status as monitor
    from hpcft.rundir import store

    if warmup + 2 > steps:
        raise click.BadParameter(f"--warmup {warmup} leaves fewer than 2 of --steps {steps} to measure")
    name = _load_plan(nodes=sizes[0], overrides=overrides, **kwargs).spec.run.name
    plans = [
        _load_plan(nodes=n, overrides=(*overrides, *scale_mod.bench_overrides(steps, name, n)), **kwargs) for n in sizes
    ]  # fmt: skip -- every size planned (and checked) before the first is submitted
    points = []
    for n, plan in zip(sizes, plans, strict=True):
        run, job_id = backends.submit(plan)
        click.echo(f"{n} node(s): {run.name} as job {job_id}", err=True)
        final = monitor.wait_for(run, _progress_printer())
        if final.state != "COMPLETED":
            raise RunError(f"{run.name} ({n} nodes) ended {final.state}", hint=f"hpcft logs {run}")
        points.append(scale_mod.scale_point(run.name, n, store.read_metrics(run), warmup))
    rows = scale_mod.scale_rows(points)
    one = scale_mod.one_machine_sizes(points)
    notes = [scale_mod.ONE_MACHINE_NOTE.format(sizes=", ".join(f"{n} nodes" for n in one))] if one else []
    _console().print(scale_mod.scale_table(rows))
    for note in [*notes, f"reference on real hardware: {scale_mod.REFERENCE}"]:
        click.secho(note, fg="yellow" if note in notes else None)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else Path(plans[0].run_dir).parent / f"{name}-scale-{stamp}"
    for path in scale_mod.write_report(rows, notes, folder):
        click.echo(f"wrote {path}")
