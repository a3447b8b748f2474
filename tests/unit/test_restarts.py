"""In-job restarts and lost job runs: who restarts, how often, and what state.json records."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hpcft.node.agent import end_without_lost_node, supervise
from hpcft.node.begin_job import lost_segment, record_lost
from hpcft.plan.requeue import in_job_restarts
from hpcft.rundir import store
from hpcft.spec import build_spec


def spec(launcher: str = "torchrun", nodes: int = 2, **run) -> object:
    return build_spec(
        {
            "train": {"model": "/m", "data": {"train": "/d.jsonl"}},
            "resources": {"nodes": nodes},
            "launch": {"backend": "sbatch", "launcher": launcher},
            "run": run,
        }
    )


@pytest.mark.parametrize(
    ("launcher", "nodes", "by"),
    [
        ("torchrun", 2, "torchrun"),  # c10d: the healthy agents learn of the failed node and restart too
        ("deepspeed-pdsh", 2, "hpcft"),  # one launcher for every node: hpcft node reruns it
        ("deepspeed-openmpi", 4, "hpcft"),
        ("accelerate", 1, "hpcft"),
        ("accelerate", 2, None),  # one launcher per node, nobody tells the others: requeue
        ("deepspeed", 2, None),
        ("srun", 2, None),  # every rank is an srun task: SLURM ends the step
    ],
)
def test_who_restarts_crashed_ranks_in_the_job(launcher, nodes, by):
    r = in_job_restarts(spec(launcher, nodes), nodes, failures=0)
    assert (r.by, r.count) == (by, 2 if by else 0)


def test_static_rendezvous_restarts_only_on_one_node():
    s = build_spec({"train": {"model": "/m", "data": {"train": "/d"}}, "launch": {"rdzv": "static"}})
    assert in_job_restarts(s, 2, 0).by is None
    assert in_job_restarts(s, 1, 0).by == "torchrun"


def test_restarts_share_the_failure_budget_with_requeues():
    assert in_job_restarts(spec(max_failures=3), 2, failures=1).count == 2
    assert in_job_restarts(spec(max_failures=3), 2, failures=3).count == 0
    assert in_job_restarts(spec(max_failures=1), 2, failures=5).count == 0
    off = in_job_restarts(spec(restart_in_job=False), 2, failures=0)
    assert (off.by, off.count) == (None, 0) and "restart_in_job" in off.why


def launcher_script(tmp_path: Path, exits: list[int]) -> tuple[str, ...]:
    """A launcher that exits with the next code of ``exits`` each time it runs, counting its runs."""
    script = tmp_path / "launcher.py"
    script.write_text(
        "import pathlib, sys\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "n = int(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text(str(n + 1))\n"
        f"sys.exit({exits!r}[min(n, {len(exits) - 1})])\n"
    )
    return (sys.executable, str(script))


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_supervise_reruns_a_failed_launcher_within_its_restarts(tmp_path):
    assert supervise(tmp_path, launcher_script(tmp_path, [1, 1, 0]), {}, restarts=2) == 0
    assert runs(tmp_path) == 3


def test_supervise_gives_up_when_the_restarts_are_spent(tmp_path):
    assert supervise(tmp_path, launcher_script(tmp_path, [7]), {}, restarts=2) == 7
    assert runs(tmp_path) == 3  # the first run and two restarts


def test_supervise_does_not_rerun_an_error_a_rerun_repeats(tmp_path):
    (tmp_path / "FATAL").write_text("configuration error: train.lr must be > 0\n")
    assert supervise(tmp_path, launcher_script(tmp_path, [1, 0]), {}, restarts=2) == 1
    assert runs(tmp_path) == 1


def test_supervise_without_restarts_runs_once(tmp_path):
    assert supervise(tmp_path, launcher_script(tmp_path, [1, 0]), {}) == 1
    assert runs(tmp_path) == 1


def new_run(tmp_path: Path, **state) -> Path:
    (tmp_path / "state.json").write_text(json.dumps({"backend": "sbatch", "jobs": [], **state}))
    return tmp_path


def test_a_second_start_of_the_ranks_in_one_job_run_is_a_failure(tmp_path):
    run = new_run(tmp_path)
    store.record_job(run, "41", restart=0, rank_starts=0)  # what begin-job records
    assert store.record_rank_start(run, "41") is None  # the first start
    event = store.record_rank_start(run, "41")
    assert event["kind"] == "in-job restart" and event["job"] == "41"
    state = store.read_state(run)
    assert state["failures"] == 1 and [e["kind"] for e in state["events"]] == ["in-job restart"]
    store.record_job(run, "41", restart=1, rank_starts=0)  # SLURM requeued it: a new run of the job
    assert store.record_rank_start(run, "41") is None
    assert store.read_state(run)["failures"] == 1


def test_the_ranks_left_after_a_node_loss_restart_and_are_charged_once(tmp_path):
    """The restart into a smaller world (``JobSpec.survivor_nodes``) is the lost node's failure; the restart that
    lets its agent back in is none."""
    run = new_run(tmp_path)
    store.record_job(run, "41", restart=0, rank_starts=0)
    store.record_rank_start(run, "41", (1, 2))  # the first start is never smaller: nothing to record
    event = store.record_rank_start(run, "41", (1, 2))
    assert (event["kind"], event["ranks"]) == ("in-job restart", 1) and "the ranks left (1 of 2)" in event["reason"]
    assert store.read_state(run)["failures"] == 1  # the lost node's
    back = store.record_rank_start(run, "41", (2, 2))  # the node's agent rejoined: every rank restarts, all 2
    assert back["ranks"] == 2 and "the lost ranks are back" in back["reason"]
    assert store.read_state(run)["failures"] == 1
    crash = store.record_rank_start(run, "41", (2, 2))  # then a rank crashes: a failure
    assert "ranks" not in crash and store.read_state(run)["failures"] == 2


def test_slurms_end_of_a_run_for_the_node_its_ranks_went_on_without_is_no_second_failure(tmp_path):
    run = new_run(tmp_path)
    store.record_job(run, "41", restart=0, rank_starts=0)
    store.record_rank_start(run, "41", (2, 2))
    store.record_rank_start(run, "41", (1, 2))  # node2 lost: the rank left trains on (failure 1)
    assert record_lost(run, "41", 1, max_failures=2, ranks=2) is None  # NODE_FAIL, SLURM's requeue: the same node
    state = store.read_state(run)
    assert state["failures"] == 1 and [e["kind"] for e in state["events"]] == ["in-job restart", "lost"]


def test_ranks_of_a_job_begin_job_never_saw_count_nothing(tmp_path):
    run = new_run(tmp_path)
    assert store.record_rank_start(run, "41") is None and store.record_rank_start(run, "41") is None
    assert "failures" not in store.read_state(run)


def test_a_requeue_after_a_run_that_recorded_its_end_is_no_loss():
    state = {"events": [{"job": "7", "restart": 0, "action": "requeue", "reason": "checkpointed"}]}
    assert lost_segment(state, "7", 1, "now") is None
    assert lost_segment(state, "7", 0, "now") is None  # a first run has no previous one


def test_a_requeue_after_a_run_without_after_job_is_a_lost_run():
    # SLURM requeued job 7 after a node failure: its run 1 ended (after-job ran), run 2 did not.
    state = {"events": [{"job": "7", "restart": 0, "action": "requeue"},
                        {"job": "7", "restart": 1, "kind": "in-job restart", "action": "restart"}]}  # fmt: skip
    event = lost_segment(state, "7", 2, "now")
    assert event["kind"] == "lost" and event["restart"] == 1 and "node failed" in event["reason"]


@pytest.mark.parametrize("during", [
    {"kind": "hang", "action": "restart", "reason": "no progress past the allowance"},
    {"kind": "straggler", "action": "flag", "node": "node2"},
    {"kind": "node loss", "action": "shrink", "nodes_left": "node1"},
])  # fmt: skip
def test_what_the_watchdog_or_a_shrink_recorded_during_a_run_is_not_its_end(during):
    # The bench's drill: a hang restarted the ranks in run 2 of job 7, then node2 crashed (no after-job).
    state = {"events": [{"job": "7", "restart": 1, "action": "requeue", "kind": "time limit"},
                        {"job": "7", "restart": 2, **during}]}  # fmt: skip
    event = lost_segment(state, "7", 3, "now")
    assert event is not None and event["kind"] == "lost" and event["restart"] == 2


def test_lost_runs_spend_the_failure_budget(tmp_path, capsys):
    run = new_run(tmp_path, failures=2)
    stop = record_lost(run, "7", 1, max_failures=2)
    assert stop and "failure budget 3/2 spent" in stop
    state = store.read_state(run)
    assert state["failures"] == 3 and state["events"][-1]["action"] == "fail"
    assert "was lost" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    other = new_run(tmp_path / "other")
    assert record_lost(other, "7", 1, max_failures=2) is None and store.read_state(other)["failures"] == 1


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        ("TransientLaunchError", False),  # a DNS hiccup, an ssh check, a late peer: a failure to retry
        ("LaunchError", True),  # a launcher not installed: the same node would fail the same way again
    ],
)
def test_only_a_preflight_error_a_rerun_repeats_is_fatal(tmp_path, monkeypatch, error, fatal):
    from hpcft import errors
    from hpcft.node import agent

    (tmp_path / "spec.yaml").write_text("{}\n")
    monkeypatch.setattr(agent, "read_spec", lambda run, host: None)
    monkeypatch.setattr(agent, "with_ops", lambda run, spec, env: env)

    def prepare(run, env, spec):
        raise getattr(errors, error)("node node2: cannot resolve the master host 'node1'")

    monkeypatch.setattr(agent, "prepare", prepare)
    with pytest.raises(SystemExit) as e:
        agent.exec_node(tmp_path)
    assert e.value.code == 3 and (tmp_path / "FATAL").exists() is fatal


EVENTS = (Path(__file__).parent.parent / "data" / "slurm" / "sacctmgr_events.txt").read_text()


def test_slurms_node_events_are_read_from_recorded_sacctmgr_output():
    from hpcft.slurm import client

    events = client.parse_node_events(EVENTS)
    assert len(events) == 5 and {e[0] for e in events} == {"node2"}
    _, when, state, reason = events[-1]
    assert (state, reason) == ("DOWN*", "Not responding")
    assert when == datetime.fromisoformat("2026-12-07T02:59:13").timestamp()  # local time, as sacctmgr prints it


def test_a_node_that_went_down_during_a_lost_run_becomes_a_lemon(tmp_path, monkeypatch, capsys):
    """SLURM requeued the job after NODE_FAIL (no after-job ran): the next run's begin-job names the node from
    SLURM's accounting and the runs directory remembers it; a node down before the run started is not blamed."""
    from hpcft.rundir import lemons
    from hpcft.slurm import client

    (tmp_path / "runs" / "r").mkdir(parents=True)
    run = new_run(tmp_path / "runs" / "r")
    started = datetime.fromisoformat("2026-12-07T02:58:00").astimezone(timezone.utc).isoformat()
    store.record_job(run, "9", restart=0, nodes="node1,node2", started=started)  # what the lost run's begin-job wrote
    asked = []

    def node_events(nodes, since):
        asked.append((list(nodes), since))
        return client.parse_node_events(EVENTS)

    monkeypatch.setattr(client, "node_events", node_events)
    assert record_lost(run, "9", 1, max_failures=3) is None
    assert asked == [(["node1", "node2"], datetime.fromisoformat(started).timestamp())]
    incidents = lemons.read_incidents(tmp_path / "runs")
    assert [(i["node"], i["why"]) for i in incidents] == [("node2", "down during job 9 (Not responding)")]
    assert "node2 went down during the lost run (Not responding)" in capsys.readouterr().out
    assert lemons.lemons(incidents, incidents[0]["time"]) == ["node2"]


def test_the_ranks_left_being_done_end_the_batch_scripts_wait_for_the_lost_node(tmp_path):
    """srun waits for a lost node's task until SLURM marks the node DOWN (SlurmdTimeout): once the ranks left are
    done, the first node's hpcft node tells the batch script (SIGUSR2, its trap in per_node.sbatch.j2) — only
    there, only in a job run whose world shrank, and only to a script that asked for it (HPCFT_BATCH_PID)."""
    import signal
    import subprocess

    from hpcft.spec.io import dump_spec

    run = new_run(tmp_path)
    spec = build_spec({"train": {"model": "/m", "data": {"train": "/d.jsonl"}},
                       "resources": {"nodes": 2, "min_nodes": 1}, "launch": {"backend": "sbatch"}})  # fmt: skip
    (run / "spec.yaml").write_text(dump_spec(spec))
    store.record_job(run, "77", restart=0, rank_starts=0)
    shell = subprocess.Popen(["bash", "-c", "trap 'exit 7' USR2; while :; do sleep 0.05; done"])
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "0", "SLURM_RESTART_COUNT": "0",
           "HPCFT_BATCH_PID": str(shell.pid)}  # fmt: skip
    try:
        assert not end_without_lost_node(run, env)  # no restart yet: the world is whole
        store.record_rank_start(run, "77", (2, 2))
        store.record_rank_start(run, "77", (1, 2))  # the ranks left, 1 of 2
        assert not end_without_lost_node(run, {**env, "SLURM_NODEID": "1"})  # not the batch script's node
        assert not end_without_lost_node(run, {k: v for k, v in env.items() if k != "HPCFT_BATCH_PID"})
        assert not end_without_lost_node(run, {**env, "SLURM_RESTART_COUNT": "1"})  # another run of the job
        assert shell.poll() is None
        assert end_without_lost_node(run, env)
        assert shell.wait(10) == 7
        store.record_rank_start(run, "77", (2, 2))  # the lost node's agent came back in
        assert not end_without_lost_node(run, env)
    finally:
        shell.send_signal(signal.SIGKILL)
        shell.wait()


def test_a_crash_of_the_ranks_left_is_charged_but_their_lost_node_not_again(tmp_path, monkeypatch):
    """after-job's requeue of a run whose ranks went on without a lost node: the launcher's end there (the
    node's step dies when SLURM removes it: exit 137) is the same node's loss, already charged at the restart."""
    from hpcft.node import after_job as aj
    from hpcft.spec.io import dump_spec

    run = new_run(tmp_path)
    spec = build_spec({"train": {"model": "/m", "data": {"train": "/d.jsonl"}}, "resources": {"nodes": 2,
                       "min_nodes": 1}, "launch": {"backend": "sbatch"}, "run": {"max_failures": 3}})  # fmt: skip
    (run / "spec.yaml").write_text(dump_spec(spec))
    for name, value in {"SLURM_JOB_ID": "41", "SLURM_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(aj, "requeue", lambda *a, **k: None)
    monkeypatch.setattr(aj, "out_of_memory", lambda job, env: None)
    monkeypatch.setattr(aj, "record_goodput", lambda run: None)
    monkeypatch.setattr(aj.lemons, "to_exclude", lambda *a: ((), ""))
    store.record_job(run, "41", restart=0, rank_starts=0)
    store.record_rank_start(run, "41", (2, 2))
    store.record_rank_start(run, "41", (1, 2))  # failure 1: node2's
    assert aj.after_job(run, 137).action == "requeue"
    assert store.read_state(run)["failures"] == 1
    store.record_job(run, "41", restart=1, rank_starts=0)  # the requeued run, whole again
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert aj.after_job(run, 137).action == "requeue"  # a crash of its own
    assert store.read_state(run)["failures"] == 2
