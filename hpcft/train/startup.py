"""A rank's start-up profile: seconds from its process start to each stage before its first step.

Recorded by rank 0 in its ``train_begin`` record (``startup``) and shown by ``hpcft status RUN``, so the
cost of a (re)start is measured, not guessed: ``imports`` (torch, transformers… ready), ``process_group``
(the distributed setup: TrainingArguments), ``data`` (tokenized datasets), ``model`` (loaded, wrapped in
the Trainer) and ``train_begin`` (the Trainer's loop starts, resuming included). A warm rank
(``hpcft.train.warm``) starts at its fork with the stack imported. Nothing here imports torch.
"""

from __future__ import annotations

import gc
import os
import time

STAGES = ("imports", "process_group", "data", "model", "train_begin")
_marks: dict[str, float] = {}


def mark(stage: str) -> None:
    """Note that this rank reached ``stage`` (the first time counts)."""
    _marks.setdefault(stage, time.time())


def imports_begin() -> None:
    """The stack's imports are about to begin: the cyclic collector off until ``freeze_imports`` (each of its
    collections during an import walks every object imported so far: ~15 % of the import's time;
    ``import transformers.trainer, datasets`` here 3.66–4.22 → 3.06–3.38 s)."""
    gc.disable()


def freeze_imports() -> None:
    """The imports are done: the imported stack out of the cyclic collector's walks for good (``gc.freeze``),
    here and in every fork — it lives as long as the process, and every full collection would walk all of it
    (and copy the pages it touches in the forks). Only modules exist yet: nothing that could become garbage
    is frozen. Then the collector on again (``imports_begin``), before any fork: forks inherit its state.
    Measured: a warm 2-node demo job 21.7 CPU-s without the freeze, 15.7 with; an srun 2-node × 2-rank demo
    job of 60 steps 30.4 → 27.2 (medians of 2)."""
    gc.freeze()
    gc.enable()


def imports_done() -> None:
    """A rank's ``mark("imports")`` and ``freeze_imports`` (a warm rank was forked from a frozen import:
    ``hpcft.train.warm``)."""
    mark("imports")
    freeze_imports()


def process_start() -> float | None:
    """This process's start as a UNIX time: its start in /proc (clock ticks of the boot-time clock since
    boot) placed on the wall clock through that same clock now. Not through /proc/stat's ``btime``: a whole
    second, it put every start up to a second early (0.93 s on the lab machine), and every stage that late."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_start


def profile(warm: bool) -> dict:
    """``{"warm": …, "parent": pid, "process_start": t0, stage: seconds since t0, …}`` for the stages reached."""
    start = process_start()
    out: dict = {"warm": warm, "parent": os.getppid()}  # warm ranks: the server they were forked from
    if start is None:
        return out
    out["process_start"] = round(start, 2)
    out.update({stage: round(_marks[stage] - start, 2) for stage in STAGES if stage in _marks})
    return out
