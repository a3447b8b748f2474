"""Ending a distributed process without the gloo abort at interpreter exit.

Upstream problem (pytorch/pytorch#190489, also seen here, docs/facts.md): a Gloo worker
thread may still drop a Python reference while the interpreter finalizes; acquiring the GIL then
kills the thread and C++ calls ``std::terminate`` ("terminate called without an active
exception", SIGABRT) — *after* a correct run, so the job fails at random (1 in ~8 runs here even
with ``destroy_process_group()``, whose own TOCTOU window the issue describes). The workaround is
here and only here: finish every collective (barrier), destroy the process groups, flush what we
wrote, run the ``atexit`` handlers, then leave with ``os._exit`` so no interpreter finalization runs.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys


def exit_cleanly(rc: int) -> None:
    """Tear down torch.distributed and end the process with ``rc`` without Python finalization.

    Args:
        rc: exit status. On success (0) all ranks meet at a barrier first, so no rank tears down
            while a peer still talks to it; after a failure there is no barrier (peers may be gone).
    """
    end_distributed(rc)
    os._exit(rc)


def end_distributed(rc: int) -> None:
    """``exit_cleanly`` but for the exit: the barrier (on success), the process groups, atexit, flushed
    streams. A warm rank (``hpcft.train.warm``) returns after it; its fork ends with ``os._exit``."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if rc == 0:
                dist.barrier()
            dist.destroy_process_group()
    finally:
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # a normal exit runs them too, before the finalization we skip
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
