"""``python -u -m hpcft.train.warm <torchrun options> -m hpcft.train.main RUN``: torchrun with warm ranks.

A cold rank spends seconds of CPU importing torch, transformers, accelerate and datasets (deepspeed,
peft) before its first step; every rank of a node does it again, on the same cores, and again at every
in-job restart. Here the stack is imported once per node, by this process:

- torchrun's own agent runs as ``torch.distributed.run`` would run it (its parser and checks, the c10d
  or static rendezvous, ``--max-restarts``, its signal handling), but with a function entry point
  (``rank_entry``), which torch's elastic agent starts through ``multiprocessing``;
- the start method is the *forkserver*; before the rendezvous, while it is still the only thread of its
  process, the agent imports the stack (``PRELOAD`` + the job's own, ``preload_modules``) and starts the
  forkserver as a fork of itself (``start_server``): the agent's own torch import is the node's only one,
  imported with the garbage collector off and then frozen out of its walks (``startup.freeze_imports``);
- every rank, at the first start and at each in-job restart, is a fork of that server: it starts with
  the stack imported and builds its process group, model and data itself;
- the agent's c10d rendezvous notices the last node to join within ~0.1 s, not at its next 1 s poll
  (``elastic_workarounds``).

Safe by construction: the server is forked before the agent starts any thread (its rendezvous store runs
threads), in an environment where no import starts a thread (``SERVER_ENV``; OpenMP reads
``OMP_NUM_THREADS``, which is set as torchrun sets it before torch loads, ``omp_as_torchrun``); the fork
is refused, and the server started as multiprocessing starts it — a fresh interpreter that imports the
stack — when the process has a second thread at that point or anything else is not as expected. So no
thread, OpenMP pool, CUDA context, process group or open file of the job exists in the server when it
forks a rank (the tests count the threads: ``threads_after_preload``).
Only hpcft's own trainer starts this way; a user's command keeps its own interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import multiprocessing
import os
import sys
import threading
import time

from hpcft.train import startup

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
    """Threads of this process (1 in a process that only imported: a fork of it is safe)."""
    return len(os.listdir("/proc/self/task"))


def trainer_run_dir(argv: list[str]) -> str | None:
    """RUN where ``argv`` ends in ``-m hpcft.train.main RUN`` (as hpcft's torchrun launcher writes it), read
    before torch is imported; torchrun's own parser decides in ``launch``."""
    if len(argv) >= 3 and argv[-3] in ("-m", "--module") and argv[-2] == TRAINER:
        return argv[-1]
    return None


def omp_as_torchrun(argv: list[str]) -> None:
    """Set ``OMP_NUM_THREADS`` as torchrun would, but before this process loads torch: OpenMP reads it once,
    when torch loads it, and the ranks fork from this process's import. torchrun's rule
    (``torch.distributed.run.config_from_args``): 1 when unset and more than one rank per node."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--nproc-per-node", "--nproc_per_node", default="1")
    nproc = parser.parse_known_args(argv)[0].nproc_per_node
    if "OMP_NUM_THREADS" not in os.environ and nproc.isdigit() and int(nproc) > 1:
        os.environ["OMP_NUM_THREADS"] = "1"


def start_server(modules: list[str], fork: bool = True) -> str:
    """Import ``modules`` here and start multiprocessing's forkserver with them imported; ``"fork"`` when the
    server is a fork of this process, ``"spawn"`` when it is a fresh interpreter that imports them again
    (always where ``fork`` is false: then nothing is imported here).

    multiprocessing starts its server as a new interpreter (``util.spawnv_passfds``); while this process
    is its only thread that interpreter is replaced by a fork of this process that runs the very same
    server code (whatever this Python's version passes it), with only the descriptors it would have had
    (the rest closed, as ``spawnv_passfds`` closes them) and its lock new. Anything unexpected: the
    interpreter, as multiprocessing starts it.
    """
    from multiprocessing import forkserver, util

    if not fork:
        startup.freeze_imports()
        multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
        forkserver.ensure_running()
        return "spawn"
    for name in modules:
        with contextlib.suppress(ImportError):  # as the server's own preload: one not installed is left out
            importlib.import_module(name)
    startup.freeze_imports()  # launch imported with the collector off (startup.imports_begin)
    multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
    spawn = util.spawnv_passfds
    how = "spawn"

    def fork_instead(path, args, passfds):
        nonlocal how
        if threads_after_preload() != 1 or len(args) < 2 or args[-2] != "-c":
            return spawn(path, args, passfds)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            how = "fork"
            return pid
        code = 1
        try:  # the server: only the descriptors it was passed (the agent's "alive" pipe end must not stay open)
            keep = {0, 1, 2, *map(int, passfds)}
            for fd in map(int, os.listdir("/proc/self/fd")):
                if fd not in keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            forkserver._forkserver._lock = threading.Lock()  # the agent held it as it forked
            exec(args[-1], {"__name__": "__mp_forkserver__"})  # multiprocessing's own server code
            code = 0
        except SystemExit:  # the server's end: every client of it gone
            code = 0
        finally:
            os._exit(code)

    util.spawnv_passfds = fork_instead
    try:
        forkserver.ensure_running()
    finally:
        util.spawnv_passfds = spawn
    return how


def launch(argv: list[str]) -> None:
    """Parse torchrun's options and run its agent with warm ranks (cold, as torchrun, for anything else)."""
    run_dir = trainer_run_dir(argv)
    if run_dir is not None:  # before torch loads (module docstring)
        omp_as_torchrun(argv)
        for name, value in SERVER_ENV.items():
            os.environ.setdefault(name, value)
    omp = os.environ.get("OMP_NUM_THREADS")
    t0 = time.monotonic()
    startup.imports_begin()  # the collector on again in start_server (freeze_imports) or below
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import record
    from torch.distributed.launcher.api import elastic_launch

    from hpcft.train import elastic_workarounds

    elastic_workarounds.apply()  # the c10d rendezvous's 1 s polls and stack reads, at the start and every restart
    args = torchrun.parse_args(argv)
    ours = args.module and args.training_script == TRAINER and args.training_script_args == [run_dir]
    if run_dir is None or not ours:
        gc.enable()
        record(torchrun.run)(args)  # not hpcft's trainer: exactly torchrun
        return
    # The run directory is the working directory: keep it off the server's sys.path (hpcft.train.main).
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    args.start_method = "forkserver"
    if args.master_port is None:
        args.master_port = 29500  # as torchrun.run
    if args.standalone:
        import uuid

        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    config, _, _ = torchrun.config_from_args(args)
    # Where torchrun chose another OMP_NUM_THREADS after torch loaded here, a fresh interpreter reads it.
    how = start_server(preload_modules(run_dir), fork=os.environ.get("OMP_NUM_THREADS") == omp)
    origin = "forks of this agent" if how == "fork" else "forks of a server that imported it again"
    print(f"hpcft.train.warm: the stack imported once on this node in {time.monotonic() - t0:.1f} s; "
          f"ranks are {origin}", file=sys.stderr, flush=True)  # fmt: skip
    # torchrun's main: a failed worker's error summarised, exit 1
    record(elastic_launch(config=config, entrypoint=rank_entry))(run_dir)


if __name__ == "__main__":
    launch(sys.argv[1:])
