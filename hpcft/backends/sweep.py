"""Submitting a sweep (``hpcft.plan.sweep``): every point's run directory, the array's directory, one sbatch."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.errors import MaybeSubmittedError, RunError
from hpcft.plan import sweep as plan_sweep
from hpcft.rundir import store
from hpcft.rundir.layout import SCRIPT_FILE
from hpcft.slurm import client

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan


def submit(plans: Sequence[Plan], points: Sequence[dict[str, str]], sweep_dir: Path, name: str,
           max_parallel: int | None) -> tuple[str, list[Path]]:  # fmt: skip
    """Write the runs and ``sweep_dir``, submit the array; (array job id, run directories). All or nothing."""
    if any(p.backend != "sbatch" for p in plans):
        raise RunError("a sweep is one SLURM job array; this job's backend is not sbatch", hint="add --backend sbatch")
    runs: list[Path] = []
    written = runs  # what a failure removes: the runs, then the sweep's directory once made
    try:
        for plan in plans:
            runs.append(store.write_run_dir(plan))
        sweep_dir.mkdir(parents=True)
        written = [*runs, sweep_dir]
        store.write_atomic(sweep_dir / plan_sweep.POINTS_FILE, "".join(f"{run}\n" for run in runs))
        text = plan_sweep.sweep_script(plans[0].files[SCRIPT_FILE], str(sweep_dir), len(plans), max_parallel, name)
        store.write_atomic(sweep_dir / plan_sweep.SCRIPT_FILE, text)
        info = {"name": name, "points": [{"run": str(r), "values": v} for r, v in zip(runs, points, strict=True)]}
        store.write_atomic(sweep_dir / plan_sweep.INFO_FILE, json.dumps(info, indent=2) + "\n")
        array = client.submit(("sbatch", "--parsable", str(sweep_dir / plan_sweep.SCRIPT_FILE)))
    except MaybeSubmittedError as e:  # an array may be queued: its runs' files must stay
        raise RunError(f"{e.message}\nThe sweep's run directories and {sweep_dir} are kept for it.",
                       hint=e.hint) from None  # fmt: skip
    except BaseException as e:
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(e, OSError):
            raise RunError(f"cannot write the sweep under {sweep_dir.parent}: {e.strerror or e}") from None
        raise
    for i, (run, values) in enumerate(zip(runs, points, strict=True)):
        store.update_state(run, lambda s, i=i, v=values: s.update(sweep=sweep_dir.name, sweep_values=v,
                                                                  array_task=f"{array}_{i}"))  # fmt: skip
    return array, runs
