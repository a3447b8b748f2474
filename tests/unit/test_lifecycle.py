"""The run's lifecycle has one owner (rundir/lifecycle.py), and its segment-stamped markers make a stale one
harmless by construction: a REQUEUE or PREEMPT left by a job segment that died half-way means nothing to the
next one (issue #25, item 7): the next segment's ranks train, its in-job restarts still happen, its after-job
does not take a crash for a saved preemption."""

from __future__ import annotations

import re
import subprocess

import pytest

from hpcft.node.agent import should_rerun
from hpcft.rundir import lifecycle as markers
from tests.conftest import REPO

SEGMENT_0 = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "0"}  # after-job's view: the batch shell
SEGMENT_1 = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}  # the same job, requeued by SLURM itself
RANK_0 = {"HPCFT_JOB_ID": "7", "HPCFT_RESTART_COUNT": "0"}  # a rank's view of segment 0 (no SLURM vars over ssh)


def test_a_segment_sees_its_own_marker_with_its_step(tmp_path):
    markers.mark_saved_for_requeue(tmp_path, 120, RANK_0)
    assert markers.segment(RANK_0) == markers.segment(SEGMENT_0) == "7.0"
    assert markers.saved_for_requeue(tmp_path, SEGMENT_0) == 120  # after-job of the same segment
    assert markers.saved_for_requeue(tmp_path, RANK_0) == 120


def test_the_next_segment_ignores_a_marker_the_last_one_left(tmp_path):
    markers.mark_saved_for_requeue(tmp_path, 120, RANK_0)  # ... and then after-job never ran
    assert markers.saved_for_requeue(tmp_path, SEGMENT_1) is None
    assert markers.saved_for_requeue(tmp_path, {"HPCFT_JOB_ID": "8", "HPCFT_RESTART_COUNT": "0"}) is None


def test_a_crashed_rank_of_the_next_segment_is_restarted_in_the_job(tmp_path, monkeypatch):
    markers.mark_saved_for_requeue(tmp_path, 120, RANK_0)
    monkeypatch.setattr("os.environ", {**SEGMENT_1})
    assert should_rerun(tmp_path, 1, signalled=False)  # the stale marker does not stop the in-job restart
    monkeypatch.setattr("os.environ", {**SEGMENT_0})
    assert not should_rerun(tmp_path, 1, signalled=False)  # this segment saved: it is ending for the requeue


def test_a_marker_from_before_the_stamp_still_counts(tmp_path):
    (tmp_path / "REQUEUE").write_text("40\n")
    assert markers.saved_for_requeue(tmp_path, SEGMENT_1) == 40
    markers.requeued(tmp_path)
    assert markers.saved_for_requeue(tmp_path, SEGMENT_1) is None


def test_a_checkpoint_request_is_its_segments_alone(tmp_path, monkeypatch):
    markers.ask_to_checkpoint(tmp_path, markers.SIGTERM, SEGMENT_0)
    assert markers.checkpoint_asked(tmp_path, RANK_0) == "SIGTERM"  # the ranks of that segment see it
    assert markers.checkpoint_asked(tmp_path, SEGMENT_1) is None  # the requeued job trains on
    monkeypatch.setattr("os.environ", {**SEGMENT_1})
    assert should_rerun(tmp_path, 1, signalled=False)  # ... and restarts a crashed rank in the job
    monkeypatch.setattr("os.environ", {**SEGMENT_0})
    assert not should_rerun(tmp_path, 1, signalled=False)  # segment 0 was asked to stop: no rerun
    (tmp_path / "PREEMPT").write_text("")  # a bare `touch` (a user's script, an older hpcft)
    assert markers.checkpoint_asked(tmp_path, SEGMENT_1) == ""


SEGMENT_SH = re.search(
    r"^(segment=.*\n.*segment=.*)$", (REPO / "sbatch_templates" / "_launch_begin.j2").read_text(), re.M
)


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_JOB_ID": "812", "SLURM_RESTART_COUNT": "2"},
        {"SLURM_JOB_ID": "812"},
        {},  # job.sbatch run by hand outside SLURM
        {"SLURM_JOB_ID": "815", "SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "1"},
    ],
)
def test_the_batch_scripts_trap_stamps_the_segment_the_ranks_compute(env):
    # The trap computes the segment in bash; it must be the one every Python side computes.
    assert SEGMENT_SH, "the trap's segment lines are missing from _launch_begin.j2"
    out = subprocess.run(["bash", "-c", SEGMENT_SH.group(1) + '\necho "$segment"'], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    assert out == markers.segment(env)


def test_no_module_but_the_lifecycle_touches_a_marker():
    # Every marker's lifetime is decided in one place: no other module names a marker file.
    names = ("FINISHED_FILE", "REQUEUE_FILE", "PREEMPT_FILE", "FATAL_FILE", "RESUME_FROM_FILE", "STOP_MARKERS")
    allowed = {"hpcft/rundir/lifecycle.py", "hpcft/rundir/layout.py"}
    found = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "hpcft").rglob("*.py")
        if str(path.relative_to(REPO)) not in allowed
        for name in names
        if re.search(rf"\b{name}\b", path.read_text())
    )
    assert found == []


def test_ranks_wait_for_rank_0s_conversion_on_files_not_in_a_collective(tmp_path, monkeypatch):
    # issue #25 item 11: no barrier whose 30-minute timeout a long conversion would outlast.
    import threading

    from hpcft.errors import HpcftError
    from hpcft.train import ds_universal

    monkeypatch.setattr("os.environ", {**RANK_0})
    (tmp_path / ds_universal.FAILED).write_text("7.1 an earlier segment's failure\n")  # not this segment's
    done = threading.Timer(0.3, lambda: (tmp_path / ds_universal.LATEST_UNIVERSAL).write_text("global_step10"))
    done.start()
    ds_universal.to_universal(tmp_path, is_rank0=False, poll_s=0.05)  # returns once rank 0 published it
    (tmp_path / ds_universal.LATEST_UNIVERSAL).unlink()
    (tmp_path / ds_universal.FAILED).write_text("7.0 ds_to_universal failed on checkpoint-10 (exit 1)\n")
    try:
        ds_universal.to_universal(tmp_path, is_rank0=False, poll_s=0.05)
    except HpcftError as e:
        assert "rank 0 could not convert" in e.message and "exit 1" in e.message
    else:
        raise AssertionError("a rank waited on although rank 0 said its conversion failed")
