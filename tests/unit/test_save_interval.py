"""How often to save (#28 item 3): Daly's optimum for the run's own save time and fault rate, and
``train.save_steps: auto`` chosen from it at each job start. Every figure is worked by hand below."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hpcft.node.begin_job import choose_save_steps
from hpcft.plan import save_interval as si
from hpcft.rundir import store
from hpcft.spec import build_spec
from hpcft.train.checkpoint import with_save_steps
from tests import fuzzing as F

FAULTS = [{"action": "requeue", "kind": "preemption"}, {"action": "restart", "kind": "in-job restart"},
          {"action": "requeue", "kind": "time limit"}, {"action": "restart", "kind": "hang"}]  # fmt: skip


def test_daly_refines_young_and_never_saves_more_often_than_a_save_takes():
    assert si.young_interval(8, 1800) == pytest.approx(169.706, abs=1e-3)  # √(2 · 8 · 1800)
    assert si.daly_interval(8, 1800) == pytest.approx(164.414, abs=1e-3)  # 169.706 · 1.015960 − 8
    # MTBF 10 s, save 8 s (x = 0.4): 12.649 · (1 + 0.2108 + 0.0444) − 8 = 7.878 s, less than one save: 8 s
    assert si.daly_interval(8, 10) == 8
    assert si.daly_interval(8, 3) == 8  # a save longer than 2 × MTBF: Daly's M, but never below the save
    assert si.daly_interval(1, 3) == pytest.approx(2.449 * (1 + 0.4082 / 3 + 1 / 54) - 1, abs=1e-3)


def test_auto_save_steps_uses_the_runs_faults_or_the_prior_and_keeps_the_bounds():
    ran = si.auto_save_steps(FAULTS, 3600, 8, 0.5, 2, (10, 1000))  # 2 faults in 3600 s: 164.41 s / 0.5 s
    assert (ran["save_steps"], ran["faults"], ran["mtbf_s"]) == (329, 2, 1800.0)
    # no fault yet, 4 nodes: MTBF 3.6e6 s / 4 = 900000 s; Daly ≈ 3789 s = 7579 steps: the upper bound
    prior = si.auto_save_steps([], None, 8, 0.5, 4, (10, 1000))
    assert prior["save_steps"] == 1000 and prior["interval_s"] == pytest.approx(3789.4, abs=0.1)
    assert "7579 steps, held within" in prior["why"] and "no fault yet" in prior["why"]
    busy = si.auto_save_steps([{"action": "restart"}] * 10, 100, 8, 0.5, 1, (20, 1000))  # 8 s = 16 steps < 20
    assert busy["save_steps"] == 20
    assert si.auto_save_steps(FAULTS, 3600, None, 0.5, 2, (10, 500))["save_steps"] == 500  # no save measured


def test_a_rank_trains_with_the_recorded_choice_or_the_upper_bound():
    assert si.chosen(50, {}, 1000) == 50
    assert si.chosen("auto", {"auto_save": {"save_steps": 329}}, 1000) == 329
    assert si.chosen("auto", {}, 1000) == 1000  # nothing recorded (the local backend)
    assert si.chosen("auto", {"auto_save": {"save_steps": "x"}}, 700) == 700  # a damaged record


def test_auto_and_its_bounds_are_checked():
    spec = build_spec({"train": {"model": "m", "data": {"train": "d"}, "save_steps": "auto"}})
    assert (spec.train.save_steps, spec.train.save_steps_min, spec.train.save_steps_max) == ("auto", 10, 1000)
    with pytest.raises(Exception, match="expected an integer of at least 1 or 'auto', got str 'often'"):
        build_spec({"train": {"model": "m", "data": {"train": "d"}, "save_steps": "often"}})
    with pytest.raises(Exception, match=r"train.save_steps_min \(50\) is above train.save_steps_max \(20\)"):
        build_spec({"train": {"model": "m", "data": {"train": "d"}, "save_steps_min": 50, "save_steps_max": 20}})


def test_the_job_start_chooses_from_the_runs_own_history_and_the_ranks_read_it(tmp_path, capsys):
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="auto")
    spec = store.load_run_spec(run)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, save_steps="auto"))
    metrics = run / "metrics.jsonl"  # make_run's steps 1, 2, 3, one second apart, after their start
    metrics.write_text(json.dumps({"event": "train_begin", "time": 1.0, "start_step": 0}) + "\n" + metrics.read_text())
    state = json.loads((run / "state.json").read_text())
    state.update(last_save_seconds=2.0)  # make_run's history: a requeue after a preemption (1 fault)
    (run / "state.json").write_text(json.dumps(state))
    held = [("4242", 0.0, 100.0, 400.0), ("4242", 400.0, 450.0, 1050.0)]  # what sacct says: 300 + 600 s held
    choose_save_steps(run, spec, 2, runs_of=lambda ids: held if ids == ["4242"] else [])
    # MTBF 900 s, save 2 s: 60 · (1 + √(1/900)/3 + (1/900)/9) − 2 = 60 · 1.0112346 − 2 = 58.67 s = 59 steps of 1 s
    assert store.read_state(run)["auto_save"]["save_steps"] == 59
    assert "train.save_steps auto: every 59 steps (Daly's optimum every 59 s" in capsys.readouterr().out
    assert with_save_steps(spec, run).train.save_steps == 59


def test_without_sacct_the_job_start_uses_after_jobs_last_record(tmp_path):
    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="auto2")
    spec = store.load_run_spec(run)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, save_steps="auto"))
    metrics = run / "metrics.jsonl"
    metrics.write_text(json.dumps({"event": "train_begin", "time": 1.0, "start_step": 0}) + "\n" + metrics.read_text())
    state = json.loads((run / "state.json").read_text())
    state.update(last_save_seconds=2.0, goodput={"ettr": 0.5, "held": 900.0})
    (run / "state.json").write_text(json.dumps(state))
    choose_save_steps(run, spec, 2, runs_of=lambda ids: [])
    assert store.read_state(run)["auto_save"]["save_steps"] == 59  # the same 900 s held, from state.json
