"""Drills on the 2-node lab: never lose work.

The independent expectation is one uninterrupted run of the same job: an interrupted and resumed
run must reproduce its losses step for step and end with the same model. Requeued jobs wait in
PENDING for SLURM's 120 s BeginTime; the drills lift it with `scontrol update StartTime=now`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpcft.ops.logs import rank_text
from hpcft.rundir import lemons
from tests.cluster.lab_nodes import crash_node, node_state, restore_node, slurmd_timeout
from tests.conftest import hpcft, nodes_completing, release_requeued, squeue_state, wait_until

pytestmark = pytest.mark.cluster

STEPS = 120
# One rank per node: the drills are about nodes and jobs (the launcher matrix keeps 2 × 2).
JOB = ["--nodes", "2", "--gpus-per-node", "1", "-o", f"train.max_steps={STEPS}", "-o", "train.save_steps=20",
       "-o", "train.eval_steps=1000"]  # fmt: skip


def status(run: Path) -> dict:
    return json.loads(hpcft("status", str(run), "--json").stdout)


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # a last line without its newline is still being written
    return [json.loads(x) for x in lines if x]


def losses(run: Path) -> dict[int, float]:
    """step → loss; a step logged again after a resume keeps its newest value."""
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def submit(demo_dir: Path, runs_dir: Path, *extra: str) -> tuple[Path, str]:
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--runs-dir", str(runs_dir), *JOB, *extra).stdout
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    return run, job


def wait_finished(run: Path, timeout: float = 300) -> dict:
    def done() -> dict | None:
        st = status(run)
        if st["state"] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL"):
            raise AssertionError(f"{run.name} ended {st['state']} instead of finishing: {st}")
        return st if st["finished"] and st["state"] == "COMPLETED" else None

    # Every poll is an `hpcft status` process (0.2 CPU-s): at a user's refresh rate, not the default 0.3 s.
    return wait_until(f"{run.name} to finish", done, timeout=timeout, interval=2)


def same_weights(a: Path, b: Path, atol: float = 1e-5) -> bool:
    """Equal up to float32 rounding. Two uninterrupted runs are bit-identical here, but DDP rebuilds its
    gradient buckets after the first step of every process, so the first step after a resume all-reduces
    another bucket layout; with 4 ranks gloo's ring then adds some elements in another order (1 ulp,
    ≤ 1.2e-7 measured). With 2 ranks the sum of two numbers has no order, so resumes there are exact."""
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(float((x[k] - y[k]).abs().max()) <= atol for k in x)


@pytest.fixture(scope="module")
def reference(lab, demo_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every drill is compared with."""
    runs_dir = tmp_path_factory.mktemp("reference")
    hpcft("submit", str(demo_dir / "job.yaml"), "--runs-dir", str(runs_dir), *JOB, "--wait")
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    assert len(losses(run)) == STEPS
    return run


def test_a_warning_signal_checkpoints_requeues_and_resumes_exactly(reference, demo_dir, runs_dir):
    run, job = submit(demo_dir, runs_dir)
    wait_until("step 30", lambda: max(losses(run), default=0) >= 30)
    subprocess.run(["scancel", "-b", "-s", "USR1", job], check=True)  # what SLURM sends at --signal time
    release_requeued(job)
    st = wait_finished(run)
    assert st["job_ids"] == [job]  # one job id across the requeue
    events = json.loads((run / "state.json").read_text())["events"]
    assert events[0]["action"] == "requeue" and "warning signal" in events[0]["reason"]
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert [b["restart"] for b in begins] == [0, 1] and begins[1]["start_step"] > 30
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert same_weights(run / "model", reference / "model")
    # The goodput ledger of the two runs of this job: held time as sacct's own ElapsedRaw says, nothing redone.
    book = status(run)["goodput"]
    elapsed = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "ElapsedRaw", "-j", job], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    assert len(elapsed) == 2 and book["held"] == pytest.approx(sum(map(int, elapsed)), rel=0.02, abs=2)
    seconds = book["seconds"]
    assert seconds["redone"] == 0 and seconds["checkpoint"] > 0 and seconds["startup"] > 0 and seconds["queue"] > 0
    assert sum(v for k, v in seconds.items() if k != "queue") == pytest.approx(book["held"], abs=0.5)


def kill_rank(run: Path, rank: int) -> None:
    """SIGKILL one rank of the run's current workers."""
    os.kill(rank_pid(run, rank), signal.SIGKILL)


def test_b_killed_rank_restarts_inside_the_job_from_the_last_checkpoint(reference, demo_dir, runs_dir):
    # A save every step: the rank most likely dies inside a save, while the others wait in its barrier.
    run, job = submit(demo_dir, runs_dir, "-o", "train.save_steps=1", "-o", "train.save_total_limit=2")
    wait_until("step 40", lambda: max(losses(run), default=0) >= 40, interval=0.05)  # rotation keeps only 2
    kill_rank(run, 1)  # on node2: torchrun there fails its workers, the c10d rendezvous restarts node1's too
    t0 = time.time()
    wait_until("the restarted ranks", lambda: len([r for r in records(run) if r.get("event") == "train_begin"]) == 2,
               timeout=120)  # fmt: skip
    restart_s = time.time() - t0
    st = wait_finished(run)
    state = json.loads((run / "state.json").read_text())
    assert state["failures"] == 1 and st["job_ids"] == [job]
    assert [(e["action"], e.get("kind")) for e in state["events"]] == [("restart", "in-job restart"), ("done", None)]
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert [b["restart"] for b in begins] == [0, 0]  # the same SLURM run of the job: no requeue
    assert begins[1]["start_step"] >= 39  # step 40's own save may be the one the kill interrupted
    # Rank 0's node restarted its ranks as forks of the same warm server: no import at the restart.
    assert [b["startup"]["warm"] for b in begins] == [True, True]
    assert begins[0]["startup"]["parent"] == begins[1]["startup"]["parent"]
    assert restart_s < 90, f"in-job restart took {restart_s:.0f} s"  # nobody hung in the dead rank's barrier
    assert st["step"] == STEPS
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert same_weights(run / "model", reference / "model")


def test_b2_without_in_job_restart_a_killed_rank_fails_fast_and_requeues(reference, demo_dir, runs_dir):
    run, job = submit(demo_dir, runs_dir, "-o", "run.restart_in_job=false")
    wait_until("checkpoint-40", lambda: (run / "checkpoints" / "checkpoint-40" / "COMPLETE").exists())
    kill_rank(run, 1)  # on node2
    t0 = time.time()
    release_requeued(job)
    assert time.time() - t0 < 60, "the job hung instead of failing fast"
    st = wait_finished(run)
    state = json.loads((run / "state.json").read_text())
    assert state["failures"] == 1 and "requeue 1 of 2" in state["events"][0]["reason"]
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert begins[1]["start_step"] >= 40 and begins[1]["start_step"] % 20 == 0
    assert st["step"] == STEPS
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


def rank_pid(run: Path, rank: int) -> int:
    """The pid of one rank of the run's current workers (its newest log line names it)."""
    starts = [line for line in rank_text(run, rank).splitlines() if " pid " in line]
    return int(starts[-1].rsplit(" pid ", 1)[1])


def newest_hang(run: Path) -> dict | None:
    return next((e for e in reversed(json.loads((run / "state.json").read_text()).get("events", []))
                 if e.get("kind") == "hang"), None)  # fmt: skip


def stopped_rank_named(run: Path, timeout: float, interval: float = 1) -> dict:
    """The newest hang event once it names a stopped rank. The event is recorded at once and its suspects
    refined as each node's report comes in (``watchdog.gather``): its first version may name the rank by its
    step alone, before the report of the rank's own node says it is stopped (seen once in the test command)."""
    return wait_until("the hang event naming the stopped rank", lambda: (e := newest_hang(run)) and any(
        "stopped" in s["why"] for s in e.get("suspects", [])) and e, timeout=timeout, interval=interval)  # fmt: skip


def test_f_a_hung_node_is_found_named_and_restarted_at_default_settings(reference, demo_dir, runs_dir):
    """node2's rank stopped (SIGSTOP: alive, silent; slurmd and the agent answer, SLURM sees nothing). The
    default run.hang_timeout (90 s) finds it, the stacks name it, the ranks restart from the newest checkpoint."""
    run, job = submit(demo_dir, runs_dir)
    wait_until("step 30", lambda: max(losses(run), default=0) >= 30, interval=0.05)
    os.kill(rank_pid(run, 1), signal.SIGSTOP)  # rank 1 runs on node2
    t0, stopped_at = time.time(), max(losses(run))
    event = stopped_rank_named(run, timeout=240, interval=2)
    assert time.time() - t0 < 180, f"the hang was found after {time.time() - t0:.0f} s"
    assert [(s["node"], s["rank"]) for s in event["suspects"]] == [("node2", 1)], event
    assert event["allowed"] == 90
    stacks = (run / event["stacks"] / "node2.stacks.txt").read_text()
    assert "rank(s) 1 on node2" in stacks and "(hpcft/train/main.py:" in stacks, stacks  # py-spy read the stopped rank
    # node1's agent reports too when it sees its rank silent before the restart takes it (not always, on a busy lab)
    other = run / event["stacks"] / "node1.stacks.txt"
    assert not other.exists() or "rank(s) 0 on node1" in other.read_text()
    shown = hpcft("status", str(run)).stdout
    assert f"last hang: hung at step {event['step']}" in shown and "node2 rank 1: stopped" in shown
    lemon = hpcft("nodes", "--runs-dir", str(runs_dir)).stdout
    assert lemon.startswith(f"node2: LEMON (weight 1.00); last: hang at step {event['step']} in {run.name}"), lemon
    st = wait_finished(run)
    state = json.loads((run / "state.json").read_text())
    assert state["failures"] == 1 and st["job_ids"] == [job]  # the hang restart was charged, in the same job
    assert sorted(e.get("kind") or e["action"] for e in state["events"]) == ["done", "hang", "in-job restart"]
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert begins[1]["start_step"] >= stopped_at - 20  # at most one save interval lost
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


def test_g_the_ranks_left_train_on_at_once_when_a_node_dies(lab, reference, demo_dir, runs_dir):
    """node2 loses power: every process of it dies (slurmd, step daemon, agent, rank). SLURM notices only after
    SlurmdTimeout; with ``resources.min_nodes=1`` node1's agent re-forms a world of one within seconds and its rank
    trains on from the newest checkpoint, accumulating 2 micro-batches a step (the same samples as the reference's
    2 ranks). It finishes the run, and the job ends then, not when SLURM gets to mark node2 DOWN (srun would wait
    for node2's task until then)."""
    run, job = submit(demo_dir, runs_dir, "-o", "resources.min_nodes=1")
    wait_until("checkpoint-20", lambda: (run / "checkpoints" / "checkpoint-20" / "COMPLETE").exists(), interval=0.05)
    second = lab.nodes[1]  # the module's cluster (tests/conftest.py: LAB_MODULES)
    crash_node(second)
    crashed = time.time()
    try:
        alone = wait_until("the rank left to train on", lambda: next((r for r in records(run) if r.get("event") ==
                           "train_begin" and r["world_size"] == 1), None), timeout=120, interval=0.2)  # fmt: skip
        slurm_state, ended = wait_until("the job to end", lambda: sacct_end(job), timeout=300, interval=0.5)
        down = node_state(second).startswith("down")
    finally:
        restore_node(second)
    assert alone["time"] - crashed < slurmd_timeout(), alone["time"] - crashed  # before SLURM could act
    # SLURM's own record: the job ended before it marked node2 DOWN (squeue shows it COMPLETING until then)
    assert slurm_state == "COMPLETED" and not down and ended - crashed < slurmd_timeout(), (slurm_state, ended)
    assert alone["start_step"] >= 20 and alone["restart"] == 0  # the newest checkpoint, in the same SLURM run
    st = status(run)
    assert (st["state"], st["finished"], st["step"], st["job_ids"]) == ("COMPLETED", True, STEPS, [job]), st
    log = (run / "logs" / f"slurm-{job}.out").read_text(errors="replace")
    assert "training on 1 of 2 ranks (a node lost): train.grad_accum 1 → 2 keeps the global batch at 8" in log
    assert "hpcft: the ranks left are done: not waiting for the lost node" in log  # the batch script, told by node1
    state = json.loads((run / "state.json").read_text())
    kinds = [(e.get("kind"), e["action"], e.get("ranks")) for e in state["events"]]
    assert kinds == [("in-job restart", "restart", 1), (None, "done", None)], kinds
    assert state["failures"] == 1  # node2's loss
    trained_alone = [r["step"] for r in records(run) if "loss" in r and r["time"] > alone["time"]]
    assert max(trained_alone) == STEPS  # the rank left trained the rest of the run
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


def sacct_end(job: str) -> tuple[str, float] | None:
    """(State, End as a time) of the job's last run once SLURM's accounting has it ended, else None."""
    from datetime import datetime

    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State,End"], capture_output=True,
                         text=True).stdout.split()  # fmt: skip
    state, end = out[-1].split("|") if out else ("", "Unknown")
    return None if end in ("Unknown", "None", "") else (state, datetime.fromisoformat(end).timestamp())


def job_nodes(job: str) -> tuple[str, str]:
    """(NodeList, ExcNodeList) of a job as scontrol shows it."""
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
    return fields.get("NodeList", ""), fields.get("ExcNodeList", "")


def test_h_a_lemon_node_is_excluded_by_the_requeue_and_the_next_submission(lab, demo_dir, runs_dir):
    """A node this runs directory found at fault (test_f records node2 from a real hang; here the incident is
    written for whichever node the job got) is left out when SLURM requeues the job, and by a new job."""
    one = ["--nodes", "1", "-o", "train.save_steps=20", "-o", "train.eval_steps=1000"]
    out = hpcft(
        "submit", str(demo_dir / "job.yaml"), "--runs-dir", str(runs_dir), *one, "-o", "train.max_steps=300"
    ).stdout
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    wait_until("step 5", lambda: max(losses(run), default=0) >= 5, interval=0.2)
    first, _ = job_nodes(job)
    lemons.record(runs_dir, [first], "hang at step 5 (recorded by the test)", run.name)
    plan = hpcft("plan", str(demo_dir / "job.yaml"), "--runs-dir", str(runs_dir), *one).stdout
    assert f"# --- lemon nodes ---\n{first}: named by recent faults" in plan
    subprocess.run(["scancel", "-b", "-s", "USR1", job], check=True)  # what SLURM sends at --signal time
    release_requeued(job)
    wait_until("the requeued run", lambda: squeue_state(job).startswith("RUNNING"), interval=0.5)
    second, excluded = job_nodes(job)
    assert excluded == first and second != first and second in lab.nodes
    wait_finished(run)
    assert f"requeue: excluding lemon nodes {first}" in (run / "logs" / f"slurm-{job}.out").read_text(errors="replace")
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--runs-dir", str(runs_dir), *one, "-o", "train.max_steps=10",
                "--wait").stdout  # fmt: skip
    again = out.split(" as job ")[1].split()[0]
    newest = max((p.parent for p in runs_dir.glob("*/spec.yaml")), key=lambda p: p.name)
    assert job_nodes(again) == (second, first)
    assert f"at submission: excluding lemon nodes {first}" in hpcft("status", str(newest)).stdout


def test_c_damaged_newest_checkpoint_is_skipped_on_resume(reference, tmp_path):
    # Copy the finished reference run, damage its newest checkpoint, and train 20 steps more.
    (tmp_path / "runs").mkdir()
    subprocess.run(["cp", "-a", str(reference), str(tmp_path / "runs")], check=True)
    run = tmp_path / "runs" / reference.name
    newest = run / "checkpoints" / f"checkpoint-{STEPS}"
    weights = newest / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    out = hpcft("resume", str(run), "-o", f"train.max_steps={STEPS + 20}", "--wait").stdout
    assert f"from checkpoint-{STEPS - 20}" in out  # the submit side already skips the damaged one
    rank0 = rank_text(run, 0)
    assert f"skipping checkpoint {newest}: file model.safetensors has" in rank0
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert begins[-1]["start_step"] == STEPS - 20
    assert max(losses(run)) == STEPS + 20 and status(run)["finished"]


def test_d_full_filesystem_keeps_earlier_checkpoints(lab, demo_dir, tmp_path):
    fs = tmp_path / "small fs"
    fs.mkdir()
    # One checkpoint of the demo model is ~5.3 MB: the first fits, the second cannot.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(fs)], check=True)
    try:
        proc = hpcft("submit", str(demo_dir / "job.yaml"), "--runs-dir", str(fs), "--nodes", "2", "--wait",
                     "-o", "train.max_steps=40", "-o", "train.save_steps=10", "-o", "train.eval_steps=1000",
                     "-o", "run.max_failures=0", check=False)  # fmt: skip
        assert proc.returncode == 1
        (run,) = [p.parent for p in fs.glob("*/spec.yaml")]
        assert status(run)["state"] == "FAILED"
        ok = run / "checkpoints" / "checkpoint-10"
        from hpcft.rundir import checkpoints

        assert checkpoints.problem(ok) is None, "the earlier checkpoint was damaged"
        out = hpcft("logs", str(run)).stdout
        assert "no space left on the filesystem" in out and "checkpoint-10" in out and "HINT" in out
        assert "failure budget 0/0 spent" in out
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def test_e_resume_after_the_job_ended(reference, demo_dir, runs_dir):
    run, _ = submit(demo_dir, runs_dir)
    wait_until("checkpoint-20", lambda: (run / "checkpoints" / "checkpoint-20" / "COMPLETE").exists())
    hpcft("cancel", str(run))
    wait_until("the cancel", lambda: status(run)["state"] == "CANCELLED", timeout=60, interval=2)
    wait_until("the cancelled job's teardown", lambda: not nodes_completing(), timeout=120, interval=0.2)
    out = hpcft("resume", str(run), "--wait").stdout
    assert "resumed" in out
    st = status(run)
    assert st["finished"] and len(st["job_ids"]) == 2
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert same_weights(run / "model", reference / "model")


def test_resume_refuses_to_restart_from_step_zero(lab, demo_dir, runs_dir):
    run, _ = submit(demo_dir, runs_dir)
    hpcft("cancel", str(run))  # before any checkpoint
    proc = hpcft("resume", str(run), check=False)
    assert proc.returncode == 1 and "would silently start again from step 0" in proc.stderr
    assert "Traceback" not in proc.stderr
