"""The goodput ledger (#28) on a worked example: a job that restarts in the job once, is requeued once,
saves twice, and trains two steps again after the restart. Every figure below is worked by hand."""

from __future__ import annotations

import itertools

import pytest

from hpcft.ops import goodput
from hpcft.ops.goodput import JobRun
from hpcft.slurm import client


def begin(t, start_step, process_start=None):
    startup = {"process_start": process_start} if process_start is not None else {}
    return {"event": "train_begin", "time": t, "start_step": start_step, "startup": startup}


def steps(first, times):
    return [{"step": first + i, "time": t, "loss": 1.0} for i, t in enumerate(times)]


RUNS = [JobRun("7", 0, 10, 100), JobRun("7", 100, 130, 200)]  # a requeue: submitted again at 100, held until 130
METRICS = [
    begin(20, 0, process_start=12), *steps(1, [21, 22, 23, 24]),
    {"event": "save", "step": 4, "time": 24.5, "seconds": 0.5},  # within step 5's 24 → 25
    *steps(5, [25, 30, 31, 32]),  # steps 7 and 8 are lost: the restart resumes from checkpoint-6
    begin(50, 6, process_start=45), *steps(7, [51, 52, 53, 54]),  # an in-job restart, in the same job run
    begin(140, 10), *steps(11, [141, 142]),  # the requeued run
    {"event": "save", "step": 12, "time": 143, "seconds": 1.0},  # after the last step: within the run's tail
]  # fmt: skip


def test_every_second_of_the_held_time_lands_in_one_bucket():
    book = goodput.ledger(RUNS, METRICS, now=1000)
    assert book["seconds"] == {
        "queue": 40.0,  # 10 before the first run, 30 before the requeued one
        "startup": 25.0,  # 20 - 10, then 50 - 45 (the new ranks' process start), then 140 - 130
        "productive": 15.5,  # 10 s of attempt 1's kept steps + 4 + 2, less the 0.5 s save within step 5
        "checkpoint": 1.5,
        "redone": 2.0,  # steps 7 and 8 of the first attempt
        # 45 - 32 (dead ranks to the new process), 100 - 54 and 200 - 142 (the runs' tails) less the 1 s save
        "restart": 116.0,
        "unknown": 0.0,
    }
    assert (book["held"], book["wall"], book["ettr"]) == (160.0, 200.0, pytest.approx(15.5 / 160, abs=1e-3))
    assert sum(v for k, v in book["seconds"].items() if k != "queue") == pytest.approx(book["held"])
    line = goodput.summary(book)
    assert line.startswith("goodput: ETTR 0.10 of 2.7 min held; largest loss: restart 1.9 min (58 % of 3.3 min)")


def test_a_running_job_is_held_until_now_and_a_pending_one_only_waits():
    book = goodput.ledger([JobRun("8", 0, 5, None)], [begin(6, 0), *steps(1, [7, 8])], now=20)
    assert book["held"] == 15.0 and book["seconds"]["restart"] == 12.0  # since its last step, as far as known
    assert goodput.ledger([JobRun("9", 0, None, None)], [], now=30)["seconds"]["queue"] == 30.0
    assert goodput.summary(goodput.ledger([], [], now=1)) == "goodput: nothing held yet"


def test_sacct_runs_of_a_requeued_job_parse_one_line_per_run():
    text = ("7|2026-12-06T10:00:00|2026-12-06T10:00:10|2026-12-06T10:01:40\n"
            "7|2026-12-06T10:01:40|2026-12-06T10:02:10|Unknown\n"
            "8|2026-12-06T10:03:00|Unknown|Unknown\n7.batch|x|y|z\n")  # fmt: skip
    runs = client.parse_job_runs(text)
    assert [(j, e is None) for j, _, _, e in runs] == [("7", False), ("7", True), ("8", True)]
    assert runs[0][2] - runs[0][1] == 10 and runs[2][2] is None


def test_save_advice_follows_young_and_daly_for_the_runs_own_faults():
    events = [{"action": "requeue", "kind": "preemption"}, {"action": "restart", "kind": "in-job restart"},
              {"action": "requeue", "kind": "time limit"}, {"action": "restart", "kind": "hang"},
              {"action": "done"}]  # fmt: skip
    advice = goodput.save_advice(events, held=3600, save_seconds=8, step_seconds=0.5)
    # 2 faults in an hour: MTBF 1800 s; Young: √(2 · 8 · 1800) = 169.71 s; Daly, with x = 8 / 3600:
    # 169.71 · (1 + √x / 3 + x / 9) − 8 = 169.71 · 1.015960 − 8 = 164.41 s = 329 steps of 0.5 s
    assert advice == {"faults": 2, "mtbf_s": 1800.0, "save_s": 8, "interval_s": 164.4, "young_s": 169.7,
                      "save_steps": 329}  # fmt: skip
    assert goodput.save_advice([{"action": "requeue", "kind": "time limit"}], 3600, 8, 0.5) is None
    assert goodput.save_advice(events, 3600, None, 0.5) is None
    assert goodput.step_seconds(METRICS) == 1.0  # the median gap between consecutive steps of one start


def test_the_timeline_is_the_ledger_in_time_order_with_saves_cut_out():
    spans = goodput.timeline(RUNS, METRICS, now=1000)
    assert spans == [
        ("queue", 0, 10), ("startup", 10, 20), ("productive", 20, 24), ("checkpoint", 24, 24.5),
        ("productive", 24.5, 30), ("redone", 30, 32), ("restart", 32, 45), ("startup", 45, 50),
        ("productive", 50, 54), ("restart", 54, 100), ("queue", 100, 130), ("startup", 130, 140),
        ("productive", 140, 142), ("checkpoint", 142, 143), ("restart", 143, 200),
    ]  # fmt: skip
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(spans))  # nothing overlaps


def test_the_save_time_is_the_median_of_the_runs_saves():
    assert goodput.save_seconds(METRICS) == 0.75  # the saves of 0.5 s and 1.0 s
    assert goodput.save_seconds([begin(1, 0)], fallback=2.0) == 2.0  # none recorded: state.json's last
