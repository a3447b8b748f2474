"""Build DeepSpeed's C++ ops into a given cache folder: ``python -m hpcft.train.ds_ops build DIR OP...``.

Run by ``hpcft ops build`` (e.g. on a login node) and by the one node agent per job that finds the
shared cache incomplete (``hpcft.node.ds_ops``); never by the ranks, which find the ops built and load
them with the same ``ninja`` (``use_job_toolchain``). One op
after another: torch's extension lock would serialise concurrent builds anyway, with every waiting
process idle for minutes.
"""

from __future__ import annotations

import os
import sys
import time

from hpcft.errors import ConfigError
from hpcft.plan.deepspeed import DS_OPS


def use_job_toolchain() -> None:
    """Put this interpreter's bin directory first on PATH, where pip's ``ninja`` lives.

    torch's JIT builder runs ``ninja`` from PATH whenever an op is loaded, not only when it is built, and
    a ninja of another version than the one that built the op discards its build log and compiles the op
    again ("ninja: warning: build log version is too old; starting over"). A rank started over ssh (pdsh)
    or by mpirun gets the remote shell's PATH, where a system ninja may come first; the prebuild and every
    rank calling this use the same ninja whatever their launcher's PATH.
    """
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bin_dir, "ninja")) and path.split(":")[0] != bin_dir:
        os.environ["PATH"] = f"{bin_dir}:{path}" if path else bin_dir


def build_ops(names: tuple[str, ...], directory: str) -> dict[str, float]:
    """JIT-build the ops ``names`` (keys of ``DS_OPS``) into ``directory``; seconds per op."""
    os.environ["TORCH_EXTENSIONS_DIR"] = directory  # read by torch.utils.cpp_extension at build time
    use_job_toolchain()
    from deepspeed.ops import op_builder

    seconds = {}
    for name in names:
        builder = getattr(op_builder, DS_OPS[name][0])()
        if not builder.is_compatible(verbose=True):
            raise ConfigError([f"DeepSpeed op {name} cannot be built on this machine (see the messages above)"])
        t0 = time.monotonic()
        builder.load(verbose=False)
        seconds[name] = round(time.monotonic() - t0, 1)
    return seconds


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "build" or not set(sys.argv[3:]) <= set(DS_OPS):
        sys.exit(f"usage: python -m hpcft.train.ds_ops build DIR [{' | '.join(DS_OPS)}]...")
    for op, secs in build_ops(tuple(sys.argv[3:]), sys.argv[2]).items():
        print(f"DeepSpeed op {op}: ready ({secs} s)", flush=True)
