"""hpcft's own warning before the time limit (#25 item 3): its lead follows the run's measured saves.

Expectations are worked by hand from the rule the README states: 3 × the last save + 30 s (180 s before a
save is measured), capped at half the time limit, never under the save + 30 s, ``run.signal_lead`` the least.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcft.node.after_job import after_job
from hpcft.node.warn_timer import run_timer
from hpcft.plan.requeue import warning_lead
from hpcft.rundir import store
from hpcft.rundir.layout import PREEMPT_FILE, SPEC_FILE
from hpcft.rundir.lifecycle import TIMER as TIMER_MARK
from hpcft.rundir.lifecycle import ask_to_checkpoint
from hpcft.slurm.client import parse_end_time
from hpcft.spec import build_spec
from hpcft.spec.io import dump_spec


def spec_of(time: str | None = None, signal_lead: int | None = None):
    run = {"runs_dir": "/shared/runs", **({"signal_lead": signal_lead} if signal_lead else {})}
    resources = {"nodes": 1, **({"time": time} if time else {})}
    return build_spec({"train": {"model": "/m", "data": {"train": "/d.jsonl"}}, "run": run, "resources": resources})


@pytest.mark.parametrize(
    ("time", "signal_lead", "save", "lead"),
    [
        (None, None, None, 180),  # nothing measured yet
        (None, None, 100, 330),  # 3 × 100 + 30
        ("00:03:00", None, None, 90),  # half of 3 minutes
        ("00:03:00", None, 35, 90),  # 135 capped at 90 (the save needs 65)
        ("00:03:00", None, 80, 110),  # the cap would leave the 80 s save no room: 80 + 30
        ("00:03:00", 30, None, 30),  # the user's lead until a save is measured
        ("00:03:00", 30, 35, 90),  # then raised by the measured save
        ("01:00:00", 600, 10, 600),  # the user's lead is the least lead
    ],
)
def test_the_lead_follows_the_measured_save(time, signal_lead, save, lead):
    assert warning_lead(spec_of(time, signal_lead), save) == lead


def test_squeue_end_times_and_jobs_without_one():
    assert parse_end_time("2026-12-02T19:03:12\n") == pytest.approx(
        __import__("datetime").datetime(2026, 12, 2, 19, 3, 12).timestamp()
    )
    assert parse_end_time("N/A\n") is None and parse_end_time("Unknown") is None and parse_end_time("") is None


class Clock:
    """A fake clock: sleeping advances it, and the run's save time changes at a given moment."""

    def __init__(self, run: Path, t0: float, save_at: dict[float, float]):
        self.now, self.run, self.save_at, self.sleeps = t0, run, dict(save_at), []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for at, save in list(self.save_at.items()):
            if self.now >= at:
                store.update_state(self.run, lambda s, save=save: s.update(last_save_seconds=save))
                del self.save_at[at]


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / SPEC_FILE).write_text(dump_spec(spec_of("00:03:00", 30)))
    store.write_state(run, {"backend": "sbatch", "jobs": [], "failures": 0})
    return run


def test_a_save_measured_during_the_segment_moves_the_warning_earlier(run):
    # The job ends at t=1180; a 35 s save is measured at t=1020: the lead grows from 30 s to 90 s.
    clock = Clock(run, 1000.0, {1020.0: 35.0})
    line = run_timer(run, {"SLURM_JOB_ID": "7"}, clock=clock, sleep=clock.sleep, end_time=lambda job: 1180.0)
    assert clock.now == pytest.approx(1090.0)  # 1180 − 90, not 1180 − 30
    assert max(clock.sleeps) <= 15  # it looked at the save time again at least every 15 s
    assert (
        line == "hpcft: warning 90 s before the time limit (the last save took 35.0 s): asking the ranks to checkpoint"
    )
    assert (run / PREEMPT_FILE).read_text().split()[0] == TIMER_MARK


def test_without_a_measured_save_it_warns_at_the_initial_lead(run):
    clock = Clock(run, 1000.0, {})
    run_timer(run, {"SLURM_JOB_ID": "7"}, clock=clock, sleep=clock.sleep, end_time=lambda job: 1180.0)
    assert clock.now == pytest.approx(1150.0)


def test_it_stays_quiet_when_the_ranks_were_asked_already_or_the_job_has_no_end(run):
    (run / PREEMPT_FILE).write_text("SIGTERM\n")
    clock = Clock(run, 1000.0, {})
    assert run_timer(run, {"SLURM_JOB_ID": "7"}, clock=clock, sleep=clock.sleep, end_time=lambda job: 1180.0) is None
    assert (run / PREEMPT_FILE).read_text() == "SIGTERM\n"  # a preemption stays a preemption
    (run / PREEMPT_FILE).unlink()
    assert run_timer(run, {"SLURM_JOB_ID": "7"}, clock=clock, sleep=clock.sleep, end_time=lambda job: None) is None
    assert not (run / PREEMPT_FILE).exists() and clock.sleeps == []


def test_an_extended_time_limit_is_read_again(run):
    ends = iter([1180.0, 1480.0])  # an admin added 5 minutes after the job started
    clock = Clock(run, 1000.0, {})
    run_timer(run, {"SLURM_JOB_ID": "7"}, clock=clock, sleep=clock.sleep, end_time=lambda job: next(ends, 1480.0))
    assert clock.now == pytest.approx(1450.0)


def test_after_job_names_the_timer_as_the_cause(run, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr("hpcft.node.after_job.client.requeue", lambda job: None)
    monkeypatch.setattr("hpcft.node.after_job.out_of_memory", lambda job, env: None)
    monkeypatch.setattr("hpcft.node.after_job.lifecycle.saved_for_requeue", lambda run, env: 40)
    ask_to_checkpoint(run, TIMER_MARK, {"SLURM_JOB_ID": "7"}, "lead=90 save=35.0")
    decision = after_job(run, 0)
    assert (
        decision.action == "requeue" and decision.reason == "checkpointed after hpcft's warning before the time limit"
    )


def _warning_trap(run: Path, segment: str) -> subprocess.CompletedProcess:
    """The batch script's USR1 handler (from the rendered two-node script), called once in ``segment``."""
    script = (Path(__file__).parents[1] / "golden" / "two_nodes.sbatch").read_text()
    handler = script[script.index("on_warning() {") : script.index("trap on_warning USR1")]
    return subprocess.run(["bash", "-c", f'RUN_DIR="$1"; segment="$2"\n{handler}\non_warning', "_", str(run),
                           segment], capture_output=True, text=True, check=True)  # fmt: skip


def test_slurms_warning_leaves_the_timers_request_of_the_same_segment_alone(tmp_path):
    env = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}
    ask_to_checkpoint(tmp_path, TIMER_MARK, env, "lead=120")
    out = _warning_trap(tmp_path, "7.1").stdout
    assert out == "hpcft: warning signal: the ranks are already checkpointing (asked by TIMER)\n"
    assert (tmp_path / PREEMPT_FILE).read_text() == "TIMER 7.1 lead=120\n"
    out = _warning_trap(tmp_path, "7.2").stdout  # the next segment: the old request is not its own
    assert out == "hpcft: warning signal: asking the ranks to checkpoint\n"
    assert (tmp_path / PREEMPT_FILE).read_text() == "USR1 7.2\n"
