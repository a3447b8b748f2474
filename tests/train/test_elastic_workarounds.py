"""hpcft.train.elastic_workarounds: torch's c10d rendezvous, polled quickly and without reading source files."""

from __future__ import annotations

import inspect
import itertools
import socket
import threading
import time

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

from hpcft.launchers.torchrun import SURVIVORS_RDZV_CONF
from hpcft.train import elastic_workarounds as ew


def test_torch_still_polls_the_join_once_a_second_and_reads_the_stack():
    """What the workaround replaces is still in torch: a torch that changed it fails here, not silently."""
    source = inspect.getsource(dr)
    assert source.count("_delay(seconds=1)") == 1  # the SYNC branch of the op executor's run, the one poll
    run = dr._hpcft_torch["run"] if hasattr(dr, "_hpcft_torch") else dr._DistributedRendezvousOpExecutor.run
    assert "_delay(seconds=1)" in inspect.getsource(run)
    torch_name = dr._hpcft_torch["get_method_name"] if hasattr(dr, "_hpcft_torch") else dr.get_method_name
    assert "inspect.stack()" in inspect.getsource(torch_name)
    holder = inspect.getsource(dr._BackendRendezvousStateHolder)
    assert "cache_duration: int = 1" in holder and "self._cache_duration" in holder  # reads served from a cache
    # an elastic round completes last_call_timeout after min_nodes joined; the settings are the three holders'
    add = inspect.getsource(dr._DistributedRendezvousOpExecutor._add_to_participants)
    assert "== self._settings.min_nodes" in add and "timeout.last_call" in add
    assert "self._settings" in inspect.getsource(dr._BackendRendezvousStateHolder.__init__)
    assert "self._op_executor = _DistributedRendezvousOpExecutor(" in inspect.getsource(dr.DynamicRendezvousHandler)


def test_the_poll_starts_quick_and_grows_to_torchs_second():
    waits = ew.join_poll_delays(12)
    assert waits[0] == pytest.approx(0.05)
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert waits[-1] == 1.0 and max(waits) == 1.0  # never slower than torch
    assert sum(waits[:4]) < 0.5  # four more reads of the store in the first half second than torch makes


def test_method_name_is_torchs_answer_without_the_stack():
    ew.apply()
    torch_name = dr._hpcft_torch["get_method_name"]

    class Handler:
        def _record(self, which):
            return which()

        def next_rendezvous(self, which):
            return self._record(which)

    for which in (torch_name, dr.get_method_name):
        assert Handler().next_rendezvous(which) == "next_rendezvous"
    assert dr.get_method_name is ew.method_name
    assert ew.method_name(10_000) == "no_method_name"  # as torch answers for a stack not that deep


def test_a_real_rendezvous_polls_quickly_and_sees_it_complete(monkeypatch):
    """Two agents' c10d rendezvous (torch's own handler, TCPStore backend): the first to join waits through
    the quick polls (torch would sleep 1 s per poll), its first poll after the second agent completed the
    rendezvous sees it complete (torch's 1 s state cache made it poll on, blind, for up to a second), and
    both get their ranks."""
    ew.apply()
    slept: list[tuple[str, float]] = []
    monkeypatch.setattr(ew, "_sleep", lambda s: (slept.append((threading.current_thread().name, s)), time.sleep(s)))
    decided: list[tuple[str, str]] = []
    a_waits = threading.Event()  # "a" joined first and has polled twice: "b" joins then (a condition, not a sleep)
    torch_join = dr._RendezvousJoinOp.__call__

    def recorded(self, ctx, deadline):
        action = torch_join(self, ctx, deadline)
        decided.append((threading.current_thread().name, action.name))
        if decided.count(("a", "SYNC")) >= 2:
            a_waits.set()
        return action

    monkeypatch.setattr(dr._RendezvousJoinOp, "__call__", recorded)
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    params = [RendezvousParameters(backend="c10d", endpoint=f"localhost:{port}", run_id="t", min_nodes=2,
                                   max_nodes=2, join_timeout=60) for _ in range(2)]  # fmt: skip
    handlers = [get_rendezvous_handler(p) for p in params]
    ranks: dict[str, int] = {}

    def join(name: str, handler) -> None:
        if name == "b":
            a_waits.wait(60)
        ranks[name] = handler.next_rendezvous().rank

    threads = [threading.Thread(target=join, args=(n, h), name=n) for n, h in zip("ab", handlers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for h in handlers:
        assert h._state_holder._cache_duration == 1  # torch's cache again once the wait is over
        h.shutdown()
    assert sorted(ranks.values()) == [0, 1]
    first = [s for name, s in slept if name == "a"]
    assert first[:2] == pytest.approx([0.05, 0.075]) and max(first) < 1.0  # torch: [1.0, ...]
    b_done = decided.index(("b", "FINISH"))
    after = [action for name, action in decided[b_done:] if name == "a"]
    assert after[-1] == "FINISH" and after.count("SYNC") <= 1, after  # at most the one read before b's write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_an_elastic_world_starts_whole_and_the_agents_left_go_on_without_a_dead_one():
    """hpcft's elastic settings (``--nnodes=1:2``, ``SURVIVORS_RDZV_CONF``) on torch's own c10d handler: the first
    round waits for both agents well past the last call (torch would start the first alone); once the second agent
    is dead (its heartbeats stop, as when its node loses power), the first one's next round forms a world of one
    within the heartbeat timeout and the last call, not the 600 s join timeout."""
    ew.apply()
    conf = dict(kv.split("=", 1) for kv in SURVIVORS_RDZV_CONF.split(","))
    last_call, port = float(conf["last_call_timeout"]), free_port()
    dead_after = int(conf["keep_alive_interval"]) * int(conf["keep_alive_max_attempt"])
    handlers = [get_rendezvous_handler(RendezvousParameters(backend="c10d", endpoint=f"localhost:{port}", run_id="e",
                min_nodes=1, max_nodes=2, join_timeout=60, **conf)) for _ in range(2)]  # fmt: skip
    worlds: dict[str, int] = {}

    def join(name: str, handler) -> None:
        worlds[name] = handler.next_rendezvous().world_size

    a = threading.Thread(target=join, args=("a", handlers[0]))
    a.start()
    a.join(last_call + 1.5)  # the claim is about time: alone, "a" must not complete at its last call
    assert a.is_alive() and not worlds, "the first round completed without the second agent"
    b = threading.Thread(target=join, args=("b", handlers[1]))
    b.start()
    for t in (a, b):
        t.join(60)
    assert worlds == {"a": 2, "b": 2}
    assert handlers[0]._settings.min_nodes == 1  # torch's settings again after the first round

    handlers[1]._stop_heartbeats()  # "b" is dead: no heartbeat, no goodbye
    t0 = time.monotonic()
    join("a", handlers[0])  # what "a"'s agent does when its workers fail on the dead peer
    took = time.monotonic() - t0
    assert worlds["a"] == 1
    assert took < dead_after + last_call + 3, f"the agent left took {took:.1f} s to go on alone"
    handlers[0].shutdown()


def test_hpcfts_torchrun_is_torchrun(tmp_path):
    """``python -m hpcft.train.torchrun`` (a user's command's agent) starts the ranks as torchrun does and fails
    as torchrun fails: a rank's non-zero exit is the agent's exit 1 with torchrun's error summary."""
    import subprocess
    import sys

    script = tmp_path / "t.py"  # a file per rank: two ranks printing into one pipe at once interleave
    script.write_text("import os, pathlib, sys\nrank, size = os.environ['RANK'], os.environ['WORLD_SIZE']\n"
                      f"pathlib.Path({str(tmp_path)!r}, 'rank' + rank).write_text(rank + ' of ' + size)\n"
                      "sys.exit(int(rank) * int(sys.argv[1]))\n")  # fmt: skip
    argv = [sys.executable, "-m", "hpcft.train.torchrun", "--standalone", "--nproc-per-node=2", str(script)]
    ok = subprocess.run([*argv, "0"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["0 of 2", "1 of 2"]
    bad = subprocess.run([*argv, "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "ChildFailedError" in bad.stderr and "exitcode  : 3" in bad.stderr, bad.stderr
