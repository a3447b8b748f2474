"""The data preparation job (``hpcft prepare``, ``submit --prepare``): tokenize and pack into the shared data
cache in a CPU job of its own, so the GPU job starts on a warm cache; pure.

Tokenizing a large dataset inside the GPU job burns GPU-hours while every other rank waits, and trips the
collective timeouts (LLaMA-Factory#2424, TRL#7223). The prepare job is one task on one node; ``submit
--prepare`` makes the training job depend on it (``afterok``; ``--kill-on-invalid-dep`` ends the training
job if preparation fails, instead of leaving it pending forever). The training job's ranks then find
the cache and skip the step (the cache is keyed by the data, tokenizer and options: ``train.data.cache``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from hpcft.rundir.layout import LOGS_DIR
from hpcft.slurm import script
from hpcft.slurm.client import RUN_COMMENT


@dataclass(frozen=True)
class PrepareOptions:
    """Where and how large the prepare job is."""

    partition: str | None = None
    cpus: int = 8
    time: str = "2:00:00"
    mem: str | None = None


def prepare_argv(run: str, name: str, python: str, opts: PrepareOptions) -> tuple[str, ...]:
    """``sbatch --parsable … --wrap 'PYTHON -m hpcft.train.prepare RUN'`` for the run directory ``run``."""
    argv = ["sbatch", "--parsable", f"--job-name={name}-prepare", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={opts.cpus}", f"--time={opts.time}", f"--chdir={run}",
            f"--output={PurePath(run) / LOGS_DIR / 'prepare-%j.out'}", f"--comment={RUN_COMMENT}{run}"]  # fmt: skip
    if opts.partition:
        argv.append(f"--partition={opts.partition}")
    if opts.mem:
        argv.append(f"--mem={opts.mem}")
    argv.append("--wrap=" + script.shell_join([python, "-m", "hpcft.train.prepare", run]))  # sbatch's shell runs it
    return tuple(argv)


def after(submit_argv: tuple[str, ...], job_id: str) -> tuple[str, ...]:
    """The training job's ``sbatch`` command, started only once job ``job_id`` has succeeded."""
    if submit_argv[:1] != ("sbatch",):
        raise ValueError("only an sbatch submission can depend on the prepare job")
    return ("sbatch", f"--dependency=afterok:{job_id}", "--kill-on-invalid-dep=yes", *submit_argv[1:])
