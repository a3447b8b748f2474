"""One toolchain for DeepSpeed's ops: the prebuild and every rank run the same ``ninja``.

torch's JIT loader runs ``ninja`` from PATH each time a rank loads an op; a ninja of another version
than the one that built it throws the build log away and compiles again (minutes per op).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hpcft.node import ds_ops
from hpcft.train.ds_ops import use_job_toolchain


def _env_bin(tmp_path: Path, *tools: str) -> Path:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in tools:
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_a_rank_puts_its_interpreters_ninja_first_whatever_its_launcher_gave_it(tmp_path, monkeypatch):
    bin_dir = _env_bin(tmp_path, "python", "ninja")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # what a rank started over ssh (pdsh) gets
    use_job_toolchain()
    assert os.environ["PATH"] == f"{bin_dir}:/usr/bin:/bin"
    use_job_toolchain()  # once is enough
    assert os.environ["PATH"] == f"{bin_dir}:/usr/bin:/bin"


def test_an_interpreter_without_its_own_ninja_leaves_path_alone(tmp_path, monkeypatch):
    bin_dir = _env_bin(tmp_path, "python")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    use_job_toolchain()
    assert os.environ["PATH"] == "/usr/bin:/bin"


def test_the_prebuild_runs_with_the_jobs_python_bin_first_on_path(tmp_path, monkeypatch):
    # `hpcft ops build` run as .venv/bin/hpcft from a shell without the venv on PATH (as `make ops` does).
    bin_dir = _env_bin(tmp_path, "ninja")
    python = bin_dir / "python"  # stands in for the interpreter: records the PATH it got, "builds" the op
    op = '"$4/deepspeed_shm_comm"'
    python.write_text(f'#!/bin/sh\nmkdir -p {op}\ntouch {op}/deepspeed_shm_comm.so {op}/.hpcft-ready\n'
                      'echo "$PATH" > "$4/path"\n')  # fmt: skip
    python.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cache = tmp_path / "cache"
    ds_ops.build(cache, ("shm_comm",), python=str(python))
    assert (cache / "path").read_text().strip() == f"{bin_dir}:/usr/bin:/bin"
    assert ds_ops.missing(cache, ("shm_comm",)) == ()


def test_the_cache_root_is_keyed_like_a_runs_directorys_cache(tmp_path):
    key = ds_ops.cache_key()
    runs = tmp_path / "runs"
    assert ds_ops.ops_dir(runs, {}) == runs.resolve() / ".cache" / "torch_extensions" / key
    assert ds_ops.ops_dir(runs, {"HPCFT_OPS_CACHE": str(tmp_path / "c")}) == (tmp_path / "c").resolve() / key
    assert ds_ops.ops_dir(runs, {"TORCH_EXTENSIONS_DIR": "/x", "HPCFT_OPS_CACHE": "/c"}) == Path("/x")


def test_an_op_counts_as_built_once_its_library_is_stamped_ready(tmp_path):
    folder = tmp_path / "deepspeed_shm_comm"
    folder.mkdir()
    (folder / "deepspeed_shm_comm.so").write_bytes(b"half-linked")  # a build still running (or cut short)
    assert ds_ops.missing(tmp_path, ("shm_comm",)) == ("shm_comm",)
    (folder / ".hpcft-ready").write_text("1\n")
    assert ds_ops.missing(tmp_path, ("shm_comm",)) == ()


def _fake_builder(tmp_path: Path) -> Path:
    """An interpreter stand-in that takes a second to "build" shm_comm and counts its builds."""
    python = _env_bin(tmp_path, "ninja") / "python"
    op = '"$4/deepspeed_shm_comm"'
    python.write_text(f'#!/bin/sh\necho built >> "$4/builds"\nsleep 1\nmkdir -p {op}\n'
                      f'touch {op}/deepspeed_shm_comm.so {op}/.hpcft-ready\n')  # fmt: skip
    python.chmod(0o755)
    return python


def test_nodes_of_one_cpu_type_build_their_cache_once_whoever_comes_first(tmp_path):
    # Every node builds its own folder (its CPU type's key); nodes sharing one wait on its lock (#25 item 13).
    import threading

    python, cache, said = _fake_builder(tmp_path), tmp_path / "cache", []
    results = []
    nodes = [threading.Thread(target=lambda: results.append(ds_ops.build(cache, ("shm_comm",), str(python),
                                                                         said.append))) for _ in range(3)]  # fmt: skip
    for node in nodes:
        node.start()
    for node in nodes:
        node.join()
    assert sorted(results) == [False, False, True]
    assert (cache / "builds").read_text() == "built\n"
    assert sum(m.startswith("building DeepSpeed ops shm_comm") for m in said) == 1
    assert sum(m.startswith("waiting for another node's build") for m in said) == 2
