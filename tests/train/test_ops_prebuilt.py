"""hpcft's ranks load a prebuilt DeepSpeed op as built: no JIT step, so nothing can compile it again.

Independent expectation: torch's own loader needs ninja for every load (it runs the build, a no-op or not);
with no ninja on PATH and a build file that ninja could not use, only a direct load of the library works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hpcft.launchers.base import SITE_DIR
from hpcft.node.ds_ops import ops_dir

pytestmark = pytest.mark.train

LOAD = """
import os
from deepspeed.ops.op_builder import ShareMemCommBuilder
if os.environ.get("PREBUILT") == "1":
    from hpcft.train.ds_ops import use_prebuilt_ops
    use_prebuilt_ops()
module = ShareMemCommBuilder().load(verbose=False)
print("LOADED", module.__file__)
"""


def test_a_ready_op_loads_without_ninja_and_without_a_usable_build_file(ds_ops, tmp_path):
    built = ops_dir(tmp_path, os.environ) / "deepspeed_shm_comm"
    copy = tmp_path / "cache" / "deepspeed_shm_comm"
    shutil.copytree(built, copy)
    (copy / "build.ninja").write_text("this is not a ninja file\n")  # as if built from another environment
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(copy.parent), "PATH": "/usr/local/nothing"}
    run = [sys.executable, "-c", LOAD]
    fast = subprocess.run(run, env={**env, "PREBUILT": "1"}, capture_output=True, text=True, timeout=300)
    assert fast.returncode == 0 and f"LOADED {copy}/deepspeed_shm_comm.so" in fast.stdout, fast.stderr[-2000:]
    slow = subprocess.run(run, env={**env, "PREBUILT": "0"}, capture_output=True, text=True, timeout=300)
    assert slow.returncode != 0 and "ninja" in slow.stderr  # torch's loader: ninja or nothing
    (copy / ".hpcft-ready").unlink()  # not stamped: not trusted
    unstamped = subprocess.run(run, env={**env, "PREBUILT": "1"}, capture_output=True, text=True, timeout=300)
    assert unstamped.returncode != 0


USER = """
from deepspeed.ops.op_builder import ShareMemCommBuilder  # what DeepSpeed's comm does for --deepspeed on CPU
module = ShareMemCommBuilder().load(verbose=False)
print("LOADED", module.__file__)
"""


def test_a_users_program_loads_ready_ops_as_built_whoever_loads_them_first(ds_ops, tmp_path):
    """A user's program under hpcft's integration (TRL with ``--deepspeed``: its TrainingArguments start
    DeepSpeed's process group, and load its op, before any Trainer is imported) loads the cache's op as built.

    The copy has no ninja log, as if built from another environment's paths: through torch's JIT step it
    must compile, and with no working compiler (CXX=false) it fails — the control run shows it."""
    built = ops_dir(tmp_path, os.environ) / "deepspeed_shm_comm"
    copy = tmp_path / "cache" / "deepspeed_shm_comm"
    shutil.copytree(built, copy)
    (copy / ".ninja_log").unlink(missing_ok=True)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(copy.parent), "CXX": "/bin/false", "HPCFT_RUN_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [SITE_DIR, os.environ.get("PYTHONPATH")]))}  # fmt: skip
    run = [sys.executable, "-c", USER]
    with_hpcft = subprocess.run(run, env={**env, "HPCFT_HF_INTEGRATION": "1"}, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
    assert with_hpcft.returncode == 0, with_hpcft.stderr[-2000:]
    assert f"LOADED {copy}/deepspeed_shm_comm.so" in with_hpcft.stdout
    without = subprocess.run(run, env={**env, "HPCFT_HF_INTEGRATION": "0"}, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert without.returncode != 0 and "_write_ninja_file_and_build_library" in without.stderr, without.stderr[-2000:]
