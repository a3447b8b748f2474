"""``python -u -m hpcft.train.warm <torchrun options> -m hpcft.train.main RUN``: torchrun with warm ranks.

A cold rank spends seconds of CPU importing torch, transformers, accelerate and datasets (deepspeed,
peft) before its first step; every rank of a node does it again, on the same cores, and again at every
in-job restart. Here the stack is imported once per node:

- torchrun's own agent runs as ``torch.distributed.run`` would run it (its parser and checks, the c10d
  or static rendezvous, ``--max-restarts``, its signal handling), but with a function entry point
  (``rank_entry``), which torch's elastic agent starts through ``multiprocessing``;
- the start method is the *forkserver*: before the rendezvous, a fresh interpreter imports the stack
  (``PRELOAD`` + the job's own, ``preload_modules``) while the agent waits for the other nodes;
- every rank, at the first start and at each in-job restart, is a fork of that server: it starts with
  the stack imported and builds its process group, model and data itself.

Safe by construction: the forkserver is a new interpreter (not a fork of the agent, whose rendezvous
store runs threads) and runs nothing but imports, in an environment where no import starts a thread
(``SERVER_ENV``; OpenMP reads ``OMP_NUM_THREADS``, which torchrun sets first): no thread, OpenMP pool,
CUDA context, process group or open file of the job exists in it when it forks (the tests count its
threads: ``threads_after_preload``).
Only hpcft's own trainer starts this way; a user's command keeps its own interpreter.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

# What every rank of hpcft's trainer imports before its first step (measured with -X importtime).
PRELOAD = (
    "torch",
    "torch.distributed",
    "transformers",
    "transformers.trainer",
    "transformers.models.auto.modeling_auto",
    "datasets",
    "hpcft.train.main",
    "hpcft.train.args",
    "hpcft.train.model",
    "hpcft.train.data",
    "hpcft.train.checkpoint",
    "hpcft.train.metrics",
    "hpcft.train.preemption",
    "hpcft.train.tracking",
)
TRAINER = "hpcft.train.main"


# The server's environment, unless the job sets these: nothing in it may start a thread at import. numpy's
# OpenBLAS starts a pool of (cores - 1) threads when loaded, and pyarrow's jemalloc a background purging
# thread; both would be lost in every fork. The ranks inherit the values (torch has its own BLAS).
SERVER_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def preload_modules(run_dir: str) -> list[str]:
    """``PRELOAD`` plus deepspeed for a ZeRO job (``ds_lazy``: no other rank imports it) and peft with LoRA."""
    from pathlib import Path

    from hpcft.errors import HpcftError
    from hpcft.rundir import store

    try:
        train = store.load_run_spec(Path(run_dir)).train
    except HpcftError:  # the rank reports a damaged spec itself; warming up is only an optimisation
        return list(PRELOAD)
    return [*PRELOAD, *(["deepspeed"] if train.uses_deepspeed else []), *(["peft"] if train.lora.enabled else [])]


def rank_entry(run_dir: str) -> None:
    """One rank, in a fork of the warm server: ``hpcft.train.main`` without leaving the process.

    torch's elastic agent counts a worker as done when it returns (its value travels back on a queue),
    so the rank returns instead of ``os._exit``; a non-zero status ends the process with that status,
    which the agent sees as a failed worker, as with a cold rank. The fork ends with ``os._exit`` in
    multiprocessing's forkserver, so no interpreter finalization runs (``dist.exit_cleanly``'s reason).
    """
    from hpcft.train import main
    from hpcft.train.dist import end_distributed
    from hpcft.train.metrics import WARM_ENV

    # The start-up profile says whether this rank found the stack imported (the server's preload worked).
    os.environ[WARM_ENV] = "1" if "transformers.trainer" in sys.modules else "0"
    try:
        rc = main.run_rank([run_dir])
        end_distributed(rc)
    except SystemExit as e:  # exit_if_saved_for_requeue, a FATAL marker
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if rc:
        raise SystemExit(rc)


def threads_after_preload() -> int:
    """Threads of this process (1 in a forkserver that only imported: the fork is safe)."""
    return len(os.listdir("/proc/self/task"))


def launch(argv: list[str]) -> None:
    """Parse torchrun's options and run its agent with warm ranks (cold, as torchrun, for anything else)."""
    from torch.distributed import run as torchrun
    from torch.distributed.launcher.api import elastic_launch

    args = torchrun.parse_args(argv)
    if not (args.module and args.training_script == TRAINER and len(args.training_script_args) == 1):
        torchrun.run(args)  # not hpcft's trainer: exactly torchrun
        return
    run_dir = args.training_script_args[0]
    # The run directory is the working directory: keep it off the server's sys.path (hpcft.train.main).
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    args.start_method = "forkserver"
    if args.master_port is None:
        args.master_port = 29500  # as torchrun.run
    if args.standalone:
        import uuid

        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    # Before the server starts: torchrun sets OMP_NUM_THREADS here, which OpenMP reads once, when torch
    # loads it — in the server. A server started earlier gives every rank all the node's cores.
    config, _, _ = torchrun.config_from_args(args)
    from multiprocessing import forkserver

    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload_modules(run_dir))
    forkserver.ensure_running()  # imports now, while the agent meets the other nodes
    elastic_launch(config=config, entrypoint=rank_entry)(run_dir)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(launch)(sys.argv[1:])  # as torchrun's main: a failed worker's error summarised, exit 1
