"""Submitting the data preparation job (``hpcft.plan.prepare``): alone, or before a training job that depends on it."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.backends import actions
from hpcft.errors import RunError
from hpcft.plan import prepare as plan_prepare
from hpcft.rundir import store
from hpcft.rundir.layout import LOGS_DIR, SPEC_FILE
from hpcft.slurm import client

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan

PREPARE_DIR = ".prepare"  # RUNS_DIR/.prepare/NAME-TIMESTAMP: a standalone prepare job's spec and log


def _check(plan: Plan) -> None:
    if plan.backend != "sbatch":
        raise RunError(f"preparing the data in a job of its own needs SLURM; this job's backend is {plan.backend}",
                       hint="add --backend sbatch (a local job prepares its data itself)")  # fmt: skip
    if plan.spec.launch.command:
        raise RunError("--prepare builds hpcft's data cache; your own trainer reads its data itself",
                       hint="drop --prepare, or run your preprocessing as a job of its own")  # fmt: skip


def _argv(plan: Plan, where: Path, opts: plan_prepare.PrepareOptions) -> tuple[str, ...]:
    return plan_prepare.prepare_argv(str(where), plan.spec.run.name, str(plan.spec.launch.python), opts)


def submit_alone(plan: Plan, opts: plan_prepare.PrepareOptions) -> tuple[Path, str]:
    """The prepare job for ``plan``'s data, with its spec and log in ``RUNS_DIR/.prepare/``; (that dir, job id)."""
    _check(plan)
    where = Path(plan.run_dir).parent / PREPARE_DIR / Path(plan.run_dir).name
    try:
        (where / LOGS_DIR).mkdir(parents=True)
    except OSError as e:
        raise RunError(f"cannot create {where}: {e.strerror}", hint="wait a second and try again") from None
    try:
        store.write_atomic(where / SPEC_FILE, plan.files[SPEC_FILE])
        return where, client.submit(_argv(plan, where, opts))
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise


def submit_with_training(plan: Plan, opts: plan_prepare.PrepareOptions) -> tuple[Path, str, str]:
    """The prepare job, then the training job depending on it (``afterok``); (run, prepare job, training job)."""
    _check(plan)
    run = store.write_run_dir(plan)
    try:
        prep = client.submit(_argv(plan, run, opts))
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    store.update_state(run, lambda s: s.update(prepare_job=prep))
    trained = dataclasses.replace(plan, submit_argv=plan_prepare.after(plan.submit_argv, prep))
    try:
        job_id = actions.start_in(trained, run)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(prep)
        raise
    return run, prep, job_id
