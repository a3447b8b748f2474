"""Build DeepSpeed's C++ ops into a given cache folder: ``python -m hpcft.train.ds_ops build DIR OP...``.

Run by ``hpcft ops build`` (e.g. on a login node) and by the one node agent per job that finds the
shared cache incomplete (``hpcft.node.ds_ops``); never by the ranks. One op after another: torch's
extension lock would serialise concurrent builds anyway, with every waiting process idle for minutes.
Each built op's folder gets a ``READY`` stamp once its library loads.

The ranks of hpcft's trainer load a stamped op's library directly (``use_prebuilt_ops``). torch's JIT
``load`` runs ninja at every load, and ninja compiles again whenever the command line it would run differs
from the one it logged — another ninja version's log, another environment's include paths (a second
clone's venv): minutes in a job for an op whose library, built for the same DeepSpeed, torch, Python and
CPU (the cache's key), loads as it is. Anything else (a user's trainer) loads through torch, with this
interpreter's ``ninja`` first on PATH (``use_job_toolchain``).
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


READY = ".hpcft-ready"  # in an op's folder: its library is built and loads (written last by build_ops)


def use_prebuilt_ops() -> None:
    """Make DeepSpeed load an op whose library the cache holds ready (``READY``) without torch's JIT step."""
    import importlib.util

    from deepspeed.ops.op_builder.builder import OpBuilder

    if getattr(OpBuilder, "_hpcft_prebuilt", False):
        return
    jit_load = OpBuilder.jit_load

    def load_prebuilt(self, verbose=True):
        cache = os.environ.get("TORCH_EXTENSIONS_DIR")
        library = os.path.join(cache or "", self.name, f"{self.name}.so")
        if not cache or not os.path.isfile(os.path.join(cache, self.name, READY)) or not os.path.isfile(library):
            return jit_load(self, verbose)
        spec = importlib.util.spec_from_file_location(self.name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # what torch's load does once ninja is done
        OpBuilder._loaded_ops[self.name] = module
        return module

    OpBuilder.jit_load = load_prebuilt
    OpBuilder._hpcft_prebuilt = True


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
    for entry in os.scandir(directory):  # the ops built, with those they pulled in (async_io: pin_memory)
        if entry.is_dir() and os.path.isfile(os.path.join(entry.path, f"{entry.name}.so")):
            with open(os.path.join(entry.path, READY), "w") as f:
                f.write(f"{time.time()}\n")
    return seconds


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "build" or not set(sys.argv[3:]) <= set(DS_OPS):
        sys.exit(f"usage: python -m hpcft.train.ds_ops build DIR [{' | '.join(DS_OPS)}]...")
    for op, secs in build_ops(tuple(sys.argv[3:]), sys.argv[2]).items():
        print(f"DeepSpeed op {op}: ready ({secs} s)", flush=True)
