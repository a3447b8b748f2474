"""The requeue decision, the signal lead, and the checkpoint commit protocol (pure / tmp dirs)."""

from __future__ import annotations

import json

import pytest

from hpcft.plan.requeue import DEFAULT_LEAD, decide, signal_lead
from hpcft.rundir import checkpoints

BASE = dict(finished=False, saved_for_requeue=False, cancelled=False, requeue_allowed=True, failures=0,
            max_failures=2)  # fmt: skip


@pytest.mark.parametrize(
    ("rc", "changes", "action"),
    [
        (0, {"finished": True}, "done"),
        (1, {"finished": True}, "done"),  # FINISHED wins over a noisy exit
        (0, {"saved_for_requeue": True}, "requeue"),
        (0, {"saved_for_requeue": True, "requeue_allowed": False}, "done"),
        (1, {}, "requeue"),
        (1, {"failures": 1}, "requeue"),
        (1, {"failures": 2}, "fail"),
        (1, {"requeue_allowed": False}, "fail"),
        (0, {}, "done"),
        (143, {"cancelled": True}, "done"),
        (0, {"cancelled": True, "saved_for_requeue": True}, "done"),  # hpcft cancel stops requeueing
    ],
)
def test_decide(rc, changes, action):
    assert decide(rc, **{**BASE, **changes}).action == action


def test_failure_reason_counts_the_budget():
    assert "requeue 2 of 2" in decide(1, **{**BASE, "failures": 1}).reason
    assert decide(3, **{**BASE, "failures": 2}).exit_code == 3


def test_preemptions_are_no_failures_and_have_their_own_budget():
    preempted = {**BASE, "saved_for_requeue": True, "failures": 2, "warned_by": "SLURM's SIGTERM (preemption)"}
    d = decide(0, **preempted, preemptions=5)
    assert (d.action, d.reason) == ("requeue", "checkpointed after SLURM's SIGTERM (preemption)")
    spent = decide(0, **preempted, preemptions=3, max_preemptions=3)
    assert spent.action == "done" and "run.max_preemptions 3/3 spent" in spent.reason and spent.exit_code == 0


def test_signal_lead_grows_with_the_measured_save_time():
    assert signal_lead(None) == DEFAULT_LEAD
    assert signal_lead(0.5) == 60  # at least a minute: SLURM checks limits every ~30 s
    assert signal_lead(100) == 330


def make_staged(tmp_path, step=10, files=None):
    staged = tmp_path / ".staging" / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    for name, data in (files or {"model.safetensors": b"x" * 100, "sub/rng_state_0.pth": b"y" * 7}).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(data)
    return staged


def test_commit_writes_manifest_and_marker_then_renames(tmp_path):
    staged = make_staged(tmp_path)
    path = checkpoints.commit(staged, tmp_path, step=10, world_size=4, zero_stage=3)
    assert path == tmp_path / "checkpoint-10" and not staged.exists()
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert manifest["files"] == {"model.safetensors": 100, "sub/rng_state_0.pth": 7}
    assert (manifest["step"], manifest["world_size"], manifest["zero_stage"]) == (10, 4, 3)
    assert (path / "COMPLETE").read_text() == "10\n"
    assert checkpoints.problem(path) is None


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: (p / "COMPLETE").unlink(), "no COMPLETE marker"),
        (lambda p: (p / "sub" / "rng_state_0.pth").unlink(), "file missing: sub/rng_state_0.pth"),
        (lambda p: (p / "model.safetensors").write_bytes(b"x" * 50), "has 50 bytes, the manifest says 100"),
        (lambda p: (p / "MANIFEST.json").write_text("{"), "unreadable MANIFEST.json"),
    ],
)
def test_damaged_checkpoints_are_named_and_skipped(tmp_path, damage, why, caplog):
    checkpoints.commit(make_staged(tmp_path, 10), tmp_path, step=10, world_size=1, zero_stage=0)
    newest = checkpoints.commit(make_staged(tmp_path, 20), tmp_path, step=20, world_size=1, zero_stage=0)
    damage(newest)
    assert why in checkpoints.problem(newest)
    info = checkpoints.newest_complete(tmp_path)
    assert info.path.name == "checkpoint-10"
    assert f"skipping checkpoint {newest}" in caplog.text


def test_rotation_never_trades_good_checkpoints_for_a_damaged_newer_one(tmp_path):
    for step in (10, 20):
        checkpoints.commit(make_staged(tmp_path, step), tmp_path, step=step, world_size=1, zero_stage=0)
    damaged = checkpoints.commit(make_staged(tmp_path, 30), tmp_path, step=30, world_size=1, zero_stage=0)
    (damaged / "model.safetensors").write_bytes(b"x" * 50)  # marked COMPLETE, but truncated
    assert [p.name for p in checkpoints.rotate(tmp_path, keep=1)] == ["checkpoint-10"]
    assert (tmp_path / "checkpoint-20").is_dir() and checkpoints.newest_complete(tmp_path).step == 20


def test_rotation_keeps_the_newest_complete(tmp_path):
    for step in (10, 20, 30):
        checkpoints.commit(make_staged(tmp_path, step), tmp_path, step=step, world_size=1, zero_stage=0)
    (tmp_path / "checkpoint-40").mkdir()  # an incomplete newer one does not count
    removed = checkpoints.rotate(tmp_path, keep=2)
    assert [p.name for p in removed] == ["checkpoint-10"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-20", "checkpoint-30", "checkpoint-40"]  # fmt: skip
    assert checkpoints.rotate(tmp_path, keep=None) == []


def test_preflight_failures_are_never_requeued():
    d = decide(3, **BASE, fatal="preflight failed on node2: launcher deepspeed-mvapich needs MVAPICH2-GDR")
    assert d.action == "fail" and "preflight failed on node2" in d.reason and d.exit_code == 3
    assert "not requeued" in d.reason


def test_resume_from_a_pinned_checkpoint_keeps_the_new_branch(tmp_path):
    # `hpcft resume RUN --checkpoint 20` after a run reached 50, with save_total_limit=2: the new branch's
    # first commit (30) must survive rotation and be where the next requeue resumes (issue #25, item 2).
    from hpcft.spec import build_spec
    from hpcft.train.checkpoint import resume_point

    run = tmp_path / "run"
    spec = build_spec({"train": {"model": "m", "data": {"train": "t.jsonl"}, "output": str(tmp_path / "ck")}})
    base = tmp_path / "ck"
    base.mkdir()
    for step in (10, 20, 30, 40, 50):
        checkpoints.commit(make_staged(tmp_path, step), base, step=step, world_size=1, zero_stage=0)
    run.mkdir()
    (run / "RESUME_FROM").write_text("checkpoint-20\n")
    assert resume_point(spec, run, 1, True) == str(base / "checkpoint-20")
    new = checkpoints.commit(make_staged(tmp_path, 30), base, step=30, world_size=1, zero_stage=0)
    (run / "RESUME_FROM").unlink()  # what the commit callback does once a newer checkpoint exists
    checkpoints.rotate(base, keep=2)
    assert sorted(p.name for p in checkpoints.candidates(base)) == ["checkpoint-20", "checkpoint-30"]
    assert checkpoints.newest_complete(base).path == new  # the next requeue continues the new branch
    aside = base / ".abandoned-after-20"
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-30", "checkpoint-40", "checkpoint-50"]
    assert all(checkpoints.problem(p) is None for p in aside.iterdir())  # the old branch is kept whole
