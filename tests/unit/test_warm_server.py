"""``hpcft.train.warm.start_server``: multiprocessing's forkserver as a fork of a process that imported the stack.

Independent evidence, read from outside the code under test: a marker module that appends its importer's
pid to a file at import (imported once: the server is a fork; twice: it imported the stack again), the
server's command line in /proc, and whether the server is still there after its client exited.
No torch here: a small module stands for the stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROBE = textwrap.dedent("""
    import gc, multiprocessing, os, sys, threading, time
    from hpcft.train import warm

    def server():
        ppid = os.getppid()
        return ppid, gc.isenabled(), open(f"/proc/{ppid}/cmdline").read().split("\\0")

    if __name__ == "__main__":
        if sys.argv[1] == "with-a-thread":
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        gc.disable()  # as warm.launch imports the stack
        how = warm.start_server(["marker"])
        with multiprocessing.get_context("forkserver").Pool(1) as pool:
            pid, rank_gc, cmdline = pool.apply(server)
        print(how, gc.isenabled(), rank_gc, pid, " ".join(cmdline), flush=True)
""")


def _probe(tmp_path: Path, mode: str) -> tuple[str, int, str, list[str]]:
    """(how the server started, its pid, its command line, the pids that imported the marker); the probe and
    the fork it ran a task in both have the garbage collector on again after ``start_server``."""
    (tmp_path / "marker.py").write_text("import os\nwith open(os.environ['MARKER'], 'a') as f:\n"
                                        "    f.write(f'{os.getpid()}\\n')\n")  # fmt: skip
    (tmp_path / "probe.py").write_text(PROBE)
    marker = tmp_path / f"imports-{mode}"
    env = {**os.environ, "MARKER": str(marker), "PYTHONPATH": f"{tmp_path}:{Path.cwd()}"}
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), mode], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    how, probe_gc, rank_gc, pid, cmdline = proc.stdout.split(" ", 4)
    assert probe_gc == rank_gc == "True", proc.stdout  # the collector was off only while the stack was imported
    return how, int(pid), cmdline.strip(), marker.read_text().split()


def _gone(pid: int, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_a_single_threaded_process_forks_the_server_which_imports_nothing_again_and_ends_with_it(tmp_path):
    how, server, cmdline, importers = _probe(tmp_path, "single")
    assert how == "fork"
    assert len(importers) == 1  # the stack was imported once, by the probe; the server is a fork of it
    assert "probe.py single" in cmdline and "forkserver" not in cmdline
    # Its client gone, the server ends: it kept none of the client's descriptors ("alive" pipe's write end).
    assert _gone(server)


def test_a_process_with_a_second_thread_gets_multiprocessings_own_server(tmp_path):
    how, server, cmdline, importers = _probe(tmp_path, "with-a-thread")
    assert how == "spawn"
    assert len(importers) == 2 and "from multiprocessing.forkserver import main" in cmdline
    assert _gone(server)
