"""``hpcft sweep``: a grid of train.* values as one SLURM job array (``hpcft.plan.sweep``)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import _handle_errors, main
from hpcft.cli.jobs import _load_plan, _progress_printer, job_options


@main.command()
@job_options
@click.option("--max-parallel", type=click.IntRange(min=1), metavar="N", help="at most N points at once (--array %N)")
@click.option("--wait", is_flag=True, help="return when every point has ended; exit 1 unless all completed")
@_handle_errors
def sweep(max_parallel: int | None, wait: bool, overrides, **kwargs) -> None:
    """Submit a grid of JOB_FILE's train.* values as one job array, one run per point.

    \b
    Every -o KEY=V1,V2,... is an axis; the grid is every combination:
      hpcft sweep job.yaml -o train.lr=1e-5,3e-5,1e-4 -o train.lora.r=8,16 --max-parallel 2
    Each point is a run of its own (RUNS_DIR/NAME-lr1e-5-r8-…), which checkpoints, requeues and
    resumes on its own. `hpcft status` groups the points and names the best by eval loss.
    """
    from hpcft.backends import sweep as sweep_backend
    from hpcft.ops import status as monitor
    from hpcft.plan import sweep as plan_sweep

    fixed, axes = plan_sweep.grid(overrides)
    points = plan_sweep.points(axes)
    base = _load_plan(overrides=fixed, **kwargs)
    name = base.spec.run.name
    plans = [
        _load_plan(
            overrides=(
                *fixed,
                *(f"{k}={v}" for k, v in point.items()),
                f"run.name={plan_sweep.point_name(name, point)}",
            ),
            **kwargs,
        )
        for point in points
    ]  # fmt: skip -- every point planned (and checked) before anything is written
    folder = Path(base.run_dir).parent / f"{name}-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    array, runs = sweep_backend.submit(plans, points, folder, name, max_parallel)
    click.echo(f"submitted sweep {folder.name}: {len(runs)} points as job array {array}"
               + (f" (at most {max_parallel} at once)" if max_parallel else ""))  # fmt: skip
    for run, point in zip(runs, points, strict=True):
        click.echo(f"  {run.name}: {', '.join(f'{k}={v}' for k, v in point.items())}")
    click.echo(f"  watch: hpcft status   (array script: {folder / plan_sweep.SCRIPT_FILE})")
    if not wait:
        return
    finals = [monitor.wait_for(run, _progress_printer()) for run in runs]
    for line in monitor.sweep_summaries(monitor.run_statuses(runs)):
        click.echo(line)
    sys.exit(0 if all(f.state == "COMPLETED" for f in finals) else 1)
