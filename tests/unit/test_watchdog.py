"""Hang detection on a node (#26 items 1–4): heartbeats, allowances per phase, suspects, stacks, the event.

The expectations are worked by hand (allowances, which rank is the odd one); the stacks come from the real
py-spy reading a real process, stopped with SIGSTOP as in the lab drill.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hpcft.node import watchdog
from hpcft.node.watchdog import Rules, allowance, overdue, suspects
from hpcft.rundir import health, store
from hpcft.train import heartbeat
from hpcft.train.heartbeat import Beat
from tests import fuzzing as F
from tests.conftest import wait_until

RULES = Rules(timeout=90, step_factor=20, phase_timeout=1800, save_seconds=700)


def beat(phase="train", step=10, at=1000.0, step_seconds=0.0, rank=0):
    return Beat(rank, 1, step, at, step_seconds, phase)


def test_each_phase_has_its_allowance():
    assert allowance(beat(step_seconds=0.07), RULES) == 90  # the floor for a fast step
    assert allowance(beat(step_seconds=12.0), RULES) == 240  # 20 × a slow step
    assert allowance(beat("first_step"), RULES) == 1800  # data, resume, the first step's compilation
    assert allowance(beat("save"), RULES) == 2100  # 3 × the last 700 s save beats the phase's 1800 s
    assert allowance(beat("eval"), RULES) == 1800
    assert allowance(beat("end"), RULES) == 1800


def test_a_rank_is_overdue_only_past_its_phase_allowance():
    beats = [beat(at=1000.0, rank=0), beat("save", at=1000.0, rank=1), beat(at=1050.0, rank=2)]
    assert overdue(beats, 1089.0, RULES) == []
    assert [b.rank for b in overdue(beats, 1091.0, RULES)] == [0]  # the saving rank 1 has 2,100 s
    assert [b.rank for b in overdue(beats, 3101.0, RULES)] == [0, 1, 2]


def ranks(*rows):
    return [{"rank": r, "step": s, "phase": "train", "state": st, "stack": k} for r, s, st, k in rows]


def test_suspects_stopped_ranks_first_then_silent_nodes_then_the_step_then_the_stack():
    nodes = ("node1", "node2")
    stopped = {"node1": {"ranks": ranks((0, 700, "S", "aa"), (1, 700, "S", "aa"))},
               "node2": {"ranks": ranks((2, 700, "T", "bb"), (3, 700, "T", "bb"))}}  # fmt: skip
    assert [(s["node"], s["rank"]) for s in suspects(stopped, nodes)] == [("node2", 2), ("node2", 3)]
    assert "stopped" in suspects(stopped, nodes)[0]["why"]
    silent = {"node1": stopped["node1"]}
    assert suspects(silent, nodes) == [{"node": "node2", "rank": None, "why": suspects(silent, nodes)[0]["why"]}]
    behind = {"node1": {"ranks": ranks((0, 701, "S", "aa"))}, "node2": {"ranks": ranks((1, 700, "S", "aa"))}}
    assert [(s["node"], s["rank"], s["step"]) for s in suspects(behind, nodes)] == [("node2", 1, 700)]
    odd = {"node1": {"ranks": ranks((0, 5, "S", "aa"), (1, 5, "S", "aa"))},
           "node2": {"ranks": ranks((2, 5, "D", "cc"))}}  # fmt: skip
    assert [(s["node"], s["rank"]) for s in suspects(odd, nodes)] == [("node2", 2)]
    alike = {"node1": {"ranks": ranks((0, 5, "S", "aa"))}, "node2": {"ranks": ranks((1, 5, "S", "aa"))}}
    assert suspects(alike, nodes) == []


def test_stack_keys_ignore_pids_and_thread_ids():
    one = 'Process 111: python x.py\nPython v3.11.7\n\nThread 111 (idle): "MainThread"\n    wait (x.py:3)\n'
    two = 'Process 222: python x.py\nPython v3.11.7\n\nThread 222 (idle): "MainThread"\n    wait (x.py:3)\n'
    other = 'Process 222: python x.py\nPython v3.11.7\n\nThread 222 (idle): "MainThread"\n    step (x.py:9)\n'
    assert watchdog.stack_key(one) == watchdog.stack_key(two) != watchdog.stack_key(other)


def test_a_publisher_writes_what_the_reader_reads_and_learns_the_step_time(tmp_path):
    pub = heartbeat.Publisher(tmp_path / "node1" / "rank-3", 3)
    first = heartbeat.read(tmp_path / "node1" / "rank-3", 3)
    assert (first.rank, first.pid, first.step, first.phase) == (3, os.getpid(), 0, "startup")
    pub.publish(0, "first_step")
    pub.publish(1, "train")
    time.sleep(0.05)
    pub.publish(2, "train")
    pub.publish(2, "save")
    got = heartbeat.read_node(tmp_path / "node1")
    assert [(b.rank, b.step, b.phase) for b in got] == [(3, 2, "save")]
    assert 0.04 < got[0].step_seconds < 1.0  # one 50 ms step, not the first step's nor the save's


SLEEPER = textwrap.dedent("""
    import os, sys, time
    from hpcft.train.heartbeat import beat
    for step in range(1, 4):
        beat(step)
    print("beating", flush=True)
    def stuck_in_a_collective():
        time.sleep(3600)
    stuck_in_a_collective()
""")


def start_stuck(tmp_path: Path, node: str = "node1", rank: int = 0) -> subprocess.Popen:
    """A process that beat three steps and then waits forever, like a rank blocked in an all-reduce."""
    env = {**os.environ, heartbeat.ENV: str(tmp_path / "hb"), "SLURMD_NODENAME": node, "RANK": str(rank),
           heartbeat.AGENT_ENV: str(os.getpid())}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "beating"
    return proc


@pytest.fixture
def stuck(tmp_path):
    proc = start_stuck(tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait for the kernel to have stopped it (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_until("the process to stop", lambda: watchdog.process_state(pid) == "T", timeout=10, interval=0.01)


def test_py_spy_reads_the_stack_of_a_stopped_process(stuck):
    stop(stuck.pid)
    dump = watchdog.dump_stack(stuck.pid)
    assert "stuck_in_a_collective" in dump, dump


def test_the_watchdog_reports_kills_and_records_a_hang(tmp_path, stuck, monkeypatch):
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="hang")
    spec = store.load_run_spec(run)
    env = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0", "SLURMD_NODENAME": "node1", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1"}  # fmt: skip
    dog = watchdog.Watchdog(run, spec, env)
    dog.folder = tmp_path / "hb" / "node1"  # where the stuck process beats
    stop(stuck.pid)
    assert dog.check(time.time() + 60) is None  # within the 90 s floor
    event = dog.check(time.time() + 91)
    assert stuck.wait(timeout=10) == -signal.SIGKILL  # killed though stopped
    assert (event["kind"], event["step"], event["phase"]) == ("hang", 3, "train")
    assert [(s["node"], s["rank"]) for s in event["suspects"]] == [("node1", 0)]
    assert store.read_state(run)["events"][-1]["kind"] == "hang"
    stacks = (run / event["stacks"] / "node1.stacks.txt").read_text()
    assert "stuck_in_a_collective" in stacks and "rank(s) 0 on node1" in stacks
    report = health.read_node_reports(run, Path(event["stacks"]).name)["node1"]
    assert report["ranks"][0]["state"] == "T" and report["ranks"][0]["step"] == 3
    assert dog.check(time.time() + 200) is None  # the killed rank is not judged again


def test_the_hang_event_says_requeue_once_the_in_job_restarts_are_spent(tmp_path):
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="spent")  # torchrun, c10d, the default run.max_failures
    env = {"SLURM_JOB_ID": "79", "SLURMD_NODENAME": "node1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node1",
           "SLURM_JOB_NUM_NODES": "1"}  # fmt: skip
    dog = watchdog.Watchdog(run, store.load_run_spec(run), env)
    assert dog._recovery()[0] == "restart"
    budget = store.load_run_spec(run).run.max_failures
    store.update_state(run, lambda state: state.update(failures=budget))
    assert dog._recovery()[0] == "requeue"


def node0_of_two(tmp_path: Path, name: str) -> tuple[Path, watchdog.Watchdog]:
    """A run and the watchdog of node1, the first of a 2-node job, reading the ``stuck`` process's beats."""
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name=name)
    env = {"SLURM_JOB_ID": "78", "SLURM_RESTART_COUNT": "0", "SLURMD_NODENAME": "node1", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2"}  # fmt: skip
    dog = watchdog.Watchdog(run, store.load_run_spec(run), env)
    dog.folder = tmp_path / "hb" / "node1"
    return run, dog


def test_a_hang_is_recorded_at_once_and_refined_as_the_other_nodes_report(tmp_path, stuck):
    """The claiming agent records the event before it waits for the other nodes: the restart can end the job
    (and this agent) first. A later report replaces the suspects of the same event; ``stop`` ends the wait."""
    run, dog = node0_of_two(tmp_path, "hang2")
    found = {}
    worker = threading.Thread(target=lambda: found.update(event=dog.check(time.time() + 91)))
    worker.start()
    hangs = lambda: [e for e in store.read_state(run).get("events", []) if e.get("kind") == "hang"]  # noqa: E731
    first = wait_until("the hang event before node2 reports", hangs, timeout=30, interval=0.05)
    assert [(s["node"], s["rank"]) for s in first[0]["suspects"]] == [("node2", None)]  # no report from node2 yet
    assert worker.is_alive()  # still gathering
    report = {"node": "node2", "ranks": [{"rank": 1, "pid": 1, "step": 3, "phase": "train", "state": "T",
                                          "silent": 95.0, "stack": "x"}]}  # fmt: skip
    health.write_node_report(run, first[0]["episode"], "node2", report, "=== stack x ===\n")
    worker.join(timeout=15)
    assert not worker.is_alive()  # every node reported: no wait for the deadline
    (only,) = hangs()
    assert (
        [(s["node"], s["rank"]) for s in only["suspects"]]
        == [("node2", 1)]
        == [(s["node"], s["rank"]) for s in found["event"]["suspects"]]
    )
    assert only["time"] == first[0]["time"]  # the same event, refined


def test_stopping_the_watchdog_ends_a_gather_at_once(tmp_path, stuck):
    run, dog = node0_of_two(tmp_path, "hang3")
    worker = threading.Thread(target=dog.check, args=(time.time() + 91,))
    worker.start()
    hangs = lambda: [e for e in store.read_state(run).get("events", []) if e.get("kind") == "hang"]  # noqa: E731
    wait_until("the hang event", hangs, timeout=30, interval=0.05)
    t0 = time.monotonic()
    dog.stop()
    worker.join(timeout=5)
    assert not worker.is_alive() and time.monotonic() - t0 < 5  # not the 20 s gather deadline


def test_a_node_is_slow_against_the_median_of_the_others_and_unmeasured_nodes_are_no_yardstick():
    speeds = {"node1": {"compute_seconds": 0.05}, "node2": {"compute_seconds": 0.125},
              "node3": {"compute_seconds": 0.055}, "node4": {"compute_seconds": 0.0}}  # fmt: skip
    assert watchdog.slow_nodes(speeds, 0.3) == {"node2": 2.38}  # 0.125 ÷ median(0.05, 0.055)
    assert watchdog.slow_nodes({"node1": {"compute_seconds": 0.05}, "node2": {"compute_seconds": 0.06}}, 0.3) == {}
    assert watchdog.slow_nodes({"node1": {"compute_seconds": 0.05}}, 0.3) == {}  # nobody to compare with


def test_a_node_summary_averages_each_ranks_own_time_over_the_window_and_takes_the_median():
    # rank: (pid, own seconds summed, steps measured) at the last summary; rank 2 restarted since (new pid)
    last = {0: (1, 1.0, 20), 1: (2, 1.2, 20), 2: (9, 5.0, 40)}
    beats = [Beat(0, 1, 40, 0.0, 0.2, "train", 2.0, 40), Beat(1, 2, 41, 0.0, 0.3, "train", 3.0, 40),
             Beat(2, 3, 41, 0.0, 0.25, "train", 0.7, 10), Beat(3, 4, 41, 0.0, 0.25, "train", 0.0, 0)]  # fmt: skip
    # own time per step in the window: rank 0 1.0/20 = 0.05, rank 1 1.8/20 = 0.09, rank 2 0.7/10 = 0.07; rank 3 none
    assert watchdog.node_speed(beats, last, "7.0", 1000.0) == {
        "segment": "7.0",
        "time": 1000.0,
        "ranks": 4,
        "step": 41,
        "step_seconds": 0.25,
        "compute_seconds": 0.07,
    }
    assert watchdog.speed_interval(beats) == 2.5  # 10 steps of 0.25 s
    assert watchdog.speed_interval([Beat(0, 1, 1, 0.0, 0.01, "train")]) == 1.0  # at least a second


def test_node_0_names_a_node_that_stays_slow_for_the_configured_steps_once(tmp_path):
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="slow")
    spec = store.load_run_spec(run)
    assert (spec.run.straggler_margin, spec.run.straggler_steps) == (1.0, 50)  # twice as long, by default
    env = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0", "SLURMD_NODENAME": "node1", "SLURM_NODEID": "0",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2"}  # fmt: skip
    dog = watchdog.Watchdog(run, spec, env)

    def at(step: int, slow: float, now: float, written: float | None = None) -> list:
        for node, compute in (("node1", 0.05), ("node2", slow)):
            health.write_node_speed(run, node, {"segment": "77.0", "time": written or now, "step": step,
                                                "compute_seconds": compute})  # fmt: skip
        return dog.judge_speeds(now)

    # node2's own time per step in each window of 10 steps; node1's is 0.05 throughout
    assert [at(s, own, 1000.0 + s) for s, own in ((100, 0.05), (110, 0.05), (120, 0.2), (130, 0.05), (140, 0.05))] \
        == [[]] * 5  # the summaries do not reach back 50 steps yet  # fmt: skip
    assert at(150, 0.05, 1150.0) == []  # steps 101-150: one slow window of five, median 0.05
    assert at(160, 0.2, 1160.0) == [] and at(170, 0.2, 1170.0) == []  # two of five: the median is still 0.05
    (event,) = at(180, 0.2, 1180.0)  # steps 131-180: three of five slow, median 0.2 = 4 × node1's
    assert (event["node"], event["ratio"], event["since_step"], event["step"]) == ("node2", 4.0, 130, 180)
    assert at(190, 0.2, 1190.0) == []  # named once
    dog._named.clear()  # as if not named yet: fresh summaries would name node2 again now
    assert at(300, 0.2, 2000.0, written=1900.0) == []  # summaries over a minute old are not judged
    state = store.read_state(run)
    assert len(state["stragglers"]) == 1 and "straggler" not in [e.get("kind") for e in state["events"]]


def test_every_node_takes_its_stacks_before_the_agent_that_found_the_hang_kills_anything(tmp_path, stuck):
    """node2's agent finds its rank silent; node1's rank (waiting in the collective) is not overdue yet. node2
    asks for every node's stacks and kills nothing until node1's agent, on its next poll, has written them."""
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="hang4")
    env = {"SLURM_JOB_ID": "80", "SLURM_RESTART_COUNT": "0", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_JOB_NUM_NODES": "2"}  # fmt: skip
    dogs = {}
    for i, node in enumerate(("node1", "node2")):
        dogs[node] = watchdog.Watchdog(run, store.load_run_spec(run),
                                       {**env, "SLURMD_NODENAME": node, "SLURM_NODEID": str(i)})  # fmt: skip
        dogs[node].folder = tmp_path / "hb" / node
    silent = start_stuck(tmp_path, "node2", 1)
    try:
        stop(silent.pid)
        found = {}
        worker = threading.Thread(target=lambda: found.update(event=dogs["node2"].check(time.time() + 91)))
        worker.start()
        wait_until("the request", lambda: health.stacks_requested(run, dogs["node2"].segment), timeout=30,
                   interval=0.05)  # fmt: skip
        time.sleep(0.5)  # node2's agent is waiting for node1's stacks, not killing
        assert silent.poll() is None and stuck.poll() is None
        assert dogs["node1"].check(time.time() + 10) is None  # node1's rank is within its allowance: it answers
        assert stuck.wait(timeout=10) == -signal.SIGKILL and silent.wait(timeout=15) == -signal.SIGKILL
        worker.join(timeout=30)
    finally:
        silent.kill()
        silent.wait()
    event = found["event"]
    assert [(s["node"], s["rank"]) for s in event["suspects"]] == [("node2", 1)]
    reports = health.read_node_reports(run, event["episode"])
    assert sorted(reports) == ["node1", "node2"] and reports["node1"]["ranks"][0]["state"] != "T"
    stacks = (run / event["stacks"] / "node1.stacks.txt").read_text()
    assert "stuck_in_a_collective" in stacks and "rank(s) 0 on node1" in stacks
    assert dogs["node1"].check(time.time() + 20) is None  # a request is answered once


def test_a_watcher_finds_ranks_that_know_only_the_hostname_and_keeps_their_files(tmp_path):
    """hpcft node-watch on a head-node launcher's other node: its ranks, started over ssh, have no SLURM
    variables and publish under the hostname; the watcher reads there too, and, starting beside ranks that may
    have published already, removes nothing. ``agent.pid`` names it, for the ranks' PR_SET_PTRACER."""
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="watch")
    host = socket.gethostname()
    env = {"SLURM_JOB_ID": "79", "SLURM_RESTART_COUNT": "0", "SLURMD_NODENAME": "slurm-name-of-node2",
           "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node1,slurm-name-of-node2",
           "SLURM_JOB_NUM_NODES": "2"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, heartbeat.ENV: str(tmp_path / "hb"), "RANK": "1"})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "beating"
        dog = watchdog.Watchdog(run, store.load_run_spec(run), env, watch_only=True)
        dog.folder = tmp_path / "hb" / "slurm-name-of-node2"
        assert dog.folders == (dog.folder, tmp_path / "hb" / host) and not dog.first  # node 0 judges speeds
        dog.start()
        assert (tmp_path / "hb" / host / "rank-1").exists()  # kept
        assert (tmp_path / "hb" / host / heartbeat.AGENT_FILE).read_text().strip() == str(os.getpid())
        dog._stop.set()  # judge by hand below, not in the thread
        late = watchdog.overdue(heartbeat.read_node(dog.folders[1]), time.time() + 91, watchdog.Rules(90, 20, 1800))
        assert [(b.rank, b.step, b.pid) for b in late] == [(1, 3, proc.pid)]
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_reused_after_the_ranks_last_beat_is_not_the_rank():
    # A heartbeat file left by an earlier segment's rank names a pid another process may have by now: that
    # process started after the beat, and the watchdog must not take it for the rank (and kill it).
    assert watchdog.process_state(os.getpid(), time.time()) in ("R", "S")
    assert watchdog.process_state(os.getpid(), time.time() - 3600) == ""  # this process did not exist then
    assert watchdog.process_state(os.getpid()) in ("R", "S")
