"""DeepSpeed's C++ ops, built once per DeepSpeed/torch version and CPU into a cache every node shares.

DeepSpeed compiles its ops (``shm_comm`` on CPU, ``async_io`` for NVMe, ``cpu_adam``) the first time a
rank uses them: minutes on the critical path of every fresh start, every rank of every node waiting on
torch's build lock. hpcft keeps them in ``RUNS_DIR/.cache/torch_extensions/<key>`` on the shared
filesystem (or under ``$HPCFT_OPS_CACHE``, a cache root shared by every runs directory), the key naming the
DeepSpeed, torch and Python versions, the machine and a hash of the CPU's feature flags (DeepSpeed compiles
with ``-march=native``: a build from a newer CPU may not run on an older one). ``$TORCH_EXTENSIONS_DIR`` set
by the user wins, as it is.

One toolchain: torch's JIT builder runs ``ninja`` from PATH every time a rank loads an op, and a ninja
of another version discards the build log it finds ("build log version is too old") and compiles again.
The ranks run with the job's python's bin directory first on PATH (``with_python_bin``, where pip's
``ninja`` lives), so every build here runs with that PATH too. ``hpcft ops build`` fills the cache ahead
(e.g. on a login node of the same CPU type); otherwise the first job's first node builds what is
missing, once, under a lock, while the other nodes wait for it — the ranks never compile.
No torch here: versions come from package metadata.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hpcft.errors import LaunchError, TransientLaunchError
from hpcft.plan.deepspeed import DS_OPS, ops_needed
from hpcft.rundir.layout import DS_CONFIG_FILE

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

ENV = "TORCH_EXTENSIONS_DIR"
ROOT_ENV = "HPCFT_OPS_CACHE"  # a cache root for every runs directory; the versioned key goes below it
WAIT_S = 1800  # how long other nodes wait for the building node (a cold async_io build takes ~3 min on 2 cores)


def cache_key(env: Mapping[str, str] | None = None) -> str:
    """``ds<ver>-torch<ver>-py<ver>-<machine>-<cpu flags hash>`` for this machine."""
    versions = []
    for dist in ("deepspeed", "torch"):
        try:
            versions.append(importlib.metadata.version(dist).replace("+", "_"))
        except importlib.metadata.PackageNotFoundError:
            versions.append("none")
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    return f"ds{versions[0]}-torch{versions[1]}-py{py}-{platform.machine()}-{cpu_flags_hash()}"


def cpu_flags_hash() -> str:
    """8 hex digits of the CPU's feature flags (/proc/cpuinfo), or ``unknown``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:8]


def ops_dir(runs_dir: str | os.PathLike, env: Mapping[str, str]) -> Path:
    """Where this node's ranks find the ops: ``$TORCH_EXTENSIONS_DIR``, else the versioned cache under
    ``$HPCFT_OPS_CACHE`` or the runs directory's ``.cache/torch_extensions``."""
    if env.get(ENV):
        return Path(env[ENV])
    root = Path(env[ROOT_ENV]) if env.get(ROOT_ENV) else Path(runs_dir) / ".cache" / "torch_extensions"
    return root.resolve() / cache_key(env)


def with_python_bin(env: Mapping[str, str], python: str) -> dict[str, str]:
    """``env`` with the job's python's bin directory first on PATH, as the ranks run: console commands of
    its environment (``trl``, ``llamafactory-cli``, ``accelerate``) are found as they are after activating
    it, and the ops are built and loaded by the same ``ninja`` (see the module docstring)."""
    bin_dir = os.path.dirname(python)
    path = env.get("PATH", "")
    return dict(env) if not bin_dir or bin_dir in path.split(":") else {**env, "PATH": f"{bin_dir}:{path}"}


READY = ".hpcft-ready"  # hpcft.train.ds_ops.READY: written into an op's folder once its library is built


def missing(directory: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """The ops of ``names`` without their built, stamped library in ``directory``."""
    folders = [(n, directory / DS_OPS[n][1]) for n in names]
    return tuple(n for n, d in folders if not (d / f"{d.name}.so").is_file() or not (d / READY).is_file())


def job_ops(spec: JobSpec, run: Path, cuda: bool) -> tuple[str, ...]:
    """The ops the job's ranks need on this node (from the run's ds_config.json)."""
    path = run / DS_CONFIG_FILE
    config = json.loads(path.read_text()) if path.is_file() else None
    return ops_needed(config, cuda=cuda, user_config=bool(spec.train.deepspeed_config))


def node_has_cuda() -> bool:
    """An NVIDIA driver is loaded here (what the ranks' ``torch.cuda.is_available`` needs first)."""
    return Path("/proc/driver/nvidia/version").exists()


def build(directory: Path, names: tuple[str, ...], python: str = sys.executable,
          say: Callable[[str], None] | None = None) -> bool:  # fmt: skip
    """Build what of ``names`` is missing in ``directory`` in a child process (the only import of DeepSpeed),
    under the folder's lock; True when this process built something.

    A node that finds the lock taken (another node of the same CPU type, i.e. the same folder, is building)
    waits for it and finds the ops built; if that node dies, its lock goes with it and this one builds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tell = say or (lambda message: None)
    with open(directory / ".hpcft-build.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tell(f"waiting for another node's build of DeepSpeed ops {', '.join(names)} in {directory}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        todo = missing(directory, names)
        if not todo:
            return False
        tell(f"building DeepSpeed ops {', '.join(todo)} into {directory} (once per DeepSpeed/torch version and "
             "CPU type; prebuild with `hpcft ops build`)")  # fmt: skip
        argv = [python, "-m", "hpcft.train.ds_ops", "build", str(directory), *todo]
        env = with_python_bin(os.environ, python)  # the ranks' ninja (module docstring)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise LaunchError(
                f"building DeepSpeed ops {', '.join(todo)} into {directory} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-2000:]}",
                hint="run `hpcft ops build` on a node to see the compiler's output (it needs gcc, ninja, libaio-dev)",
            )
        return True


def wait_for(directory: Path, names: tuple[str, ...], timeout_s: float = WAIT_S, poll_s: float = 2.0) -> None:
    """Wait until the building node has put every op of ``names`` into ``directory``."""
    deadline = time.monotonic() + timeout_s
    while missing(directory, names):
        if time.monotonic() > deadline:
            raise TransientLaunchError(
                f"waited {timeout_s / 60:.0f} min for DeepSpeed ops {', '.join(missing(directory, names))} "
                f"in {directory}, which the job's first node builds",
                hint="see the first node's lines in the job output; or prebuild with `hpcft ops build`",
            )
        time.sleep(poll_s)


def default_ops(cuda: bool) -> tuple[str, ...]:
    """What ``hpcft ops build`` builds without ``--op``: every op this kind of node may need."""
    return ("async_io", "cpu_adam", "fused_adam") if cuda else ("shm_comm", "async_io")


def prebuild(runs_dir: str, names: tuple[str, ...], env: Mapping[str, str]) -> tuple[Path, tuple[str, ...]]:
    """``hpcft ops build``: build what of ``names`` is missing in this machine's cache; (folder, built ops)."""
    directory = ops_dir(runs_dir, env)
    todo = missing(directory, names)
    if todo and not build(directory, todo):
        todo = ()  # another process built them while this one waited for the lock
    return directory, todo
