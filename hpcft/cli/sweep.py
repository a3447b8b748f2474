"""``hpcft sweep``: a grid of train.* values as one SLURM job array (``hpcft.plan.sweep``)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import _handle_errors, cluster_option, env_from_stdin_option, main
from hpcft.cli.jobs import _load_plan, _progress_printer, job_options, staged


@main.command()
@job_options
@click.option("--max-parallel", type=click.IntRange(min=1), metavar="N", help="at most N points at once (--array %N)")
@click.option("--wait", is_flag=True, help="return when every point has ended; exit 1 unless all completed")
@cluster_option
@click.option("--intent", hidden=True, help="submit at most once per this id (a sweep from a workstation)")
@env_from_stdin_option
@_handle_errors
def sweep(max_parallel: int | None, wait: bool, overrides, cluster, intent: str | None, **kwargs) -> None:
    """Submit a grid of JOB_FILE's train.* values as one job array, one run per point.

    \b
    Every -o KEY=V1,V2,... is an axis; the grid is every combination:
      hpcft sweep job.yaml -o train.lr=1e-5,3e-5,1e-4 -o train.lora.r=8,16 --max-parallel 2
    Each point is a run of its own (RUNS_DIR/NAME-lr1e-5-r8-…), which checkpoints, requeues and
    resumes on its own. `hpcft status` groups the points and names the best by eval loss.
    With --cluster the job's files are copied there first and the sweep is submitted once, as for submit.
    """
    from hpcft.backends import sweep as sweep_backend
    from hpcft.ops import status as monitor
    from hpcft.plan import sweep as plan_sweep

    if cluster is not None:
        sys.exit(_sweep_remote(cluster, kwargs, overrides, max_parallel, wait))
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
    if intent is not None:
        _sweep_once(intent, plans, points, folder, name, max_parallel)
        return
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


def _sweep_once(intent: str, plans, points, folder: Path, name: str, max_parallel: int | None) -> None:
    """The cluster side of a workstation's sweep: at most one job array per intent (``rundir.intents``).

    An earlier attempt that wrote the sweep's directory but recorded no array id is reported, never repeated:
    the array carries no comment SLURM could be asked by (a lost record needs the process SIGKILLed mid-sbatch).
    """
    import json

    from hpcft.backends import sweep as sweep_backend
    from hpcft.errors import RunError
    from hpcft.remote.submit import ANSWER_PREFIX
    from hpcft.rundir import intents

    with intents.survive_hangup(), intents.claim(folder.parent, intents.check_id(intent)) as it:
        if it.job:
            again, array, runs = True, it.job, _sweep_runs(Path(it.run))
        elif it.run and Path(it.run).exists():
            hint = "`hpcft status` shows its points; submit it anew only if none runs"
            raise RunError(f"an earlier try of this sweep wrote {it.run} but recorded no job array: it may have been "
                           "submitted", hint=hint)  # fmt: skip
        else:
            it.begin(str(folder))
            array, runs = sweep_backend.submit(plans, points, folder, name, max_parallel)
            it.done(array)
            again = False
    head = "was submitted by an earlier try of this sweep; nothing new was submitted" if again else "submitted"
    click.echo(f"sweep {Path(it.run).name} ({len(runs)} points) as job array {array}: {head}")
    for run in runs:
        click.echo(f"  {run.name}")
    click.echo(ANSWER_PREFIX + json.dumps({"run": Path(it.run).name, "job": array, "runs": [r.name for r in runs],
                                           "again": again}))  # fmt: skip


def _sweep_runs(folder: Path) -> list[Path]:
    from hpcft.plan import sweep as plan_sweep

    try:
        return [Path(line) for line in (folder / plan_sweep.POINTS_FILE).read_text().split()]
    except OSError:
        return []


def _sweep_remote(cluster, kwargs: dict, overrides, max_parallel: int | None, wait: bool) -> int:
    """Copy the job's files to ``cluster`` and submit the sweep there once; waits for every point with --wait."""
    from hpcft.remote import forward
    from hpcft.remote import submit as remote

    sp, flags = staged(cluster, kwargs, overrides)
    answer = remote.submit(cluster, sp, flags, {"max_parallel": max_parallel}, click.echo, command="sweep")
    if answer is None or not wait:
        return 0
    codes = [forward.run_here(cluster, "wait", [run], reconnect=True) for run in answer.get("runs", [])]
    return 0 if codes and all(code == 0 for code in codes) else 1
