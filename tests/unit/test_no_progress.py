"""No progress, no requeue (#26 item 7): a run whose job segments keep starting from the same checkpoint stops.

A NODE_FAIL requeue loop or preemptions before the first save cost a queue wait and an allocation each, and no
failure budget counts them. The independent expectation is the count of segments, worked by hand.
"""

from __future__ import annotations

import json

import pytest

from hpcft.node.begin_job import record_progress
from hpcft.plan.requeue import progress
from hpcft.rundir import checkpoints, store
from tests import fuzzing as F


def test_the_stall_count_follows_the_newest_checkpoint():
    assert progress(None, "7.0", None, 0, 3) == (0, None)  # the run's first segment
    assert progress(("7.0", None), "7.1", None, 0, 3) == (1, None)  # nothing committed in 7.0
    assert progress(("7.1", None), "7.2", 10, 1, 3) == (0, None)  # 7.1 committed checkpoint-10
    assert progress(("7.2", 10), "7.2", 10, 0, 3) == (0, None)  # the same segment again (a shrink's rerun)
    assert progress(("7.2", 10), "8.0", 10, 1, 3) == (2, None)  # a chained job is a segment too
    stalls, stop = progress(("8.0", 10), "8.1", 10, 2, 3)
    assert stalls == 3 and stop.startswith("3 job segments in a row started from the same point (checkpoint-10)")


@pytest.fixture
def run(tmp_path):
    F.make_workdir(tmp_path)
    return F.make_run(tmp_path, name="stall")  # holds checkpoint-2 (make_run submits from tmp_path itself)


def test_segments_that_commit_nothing_stop_the_run_and_a_new_checkpoint_resets_the_count(run):
    spec = store.load_run_spec(run)
    assert spec.run.max_stalls == 5
    verdicts = [record_progress(run, spec, f"4242.{restart}") for restart in range(5)]
    assert verdicts == [None] * 5 and store.read_state(run)["stalls"] == 4
    staged = run / "checkpoints" / ".staging-3"
    staged.mkdir()
    (staged / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    checkpoints.commit(staged, run / "checkpoints", step=3, world_size=2, zero_stage=0)
    assert record_progress(run, spec, "4242.5") is None and store.read_state(run)["stalls"] == 0
    verdicts = [record_progress(run, spec, f"4242.{restart}") for restart in range(6, 11)]
    assert verdicts[:4] == [None] * 4 and "(checkpoint-3): the run makes no progress" in verdicts[4]
    event = store.read_state(run)["events"][-1]
    assert (event["kind"], event["action"], event["job"]) == ("no progress", "fail", "4242")
