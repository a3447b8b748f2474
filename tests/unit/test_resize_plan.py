"""``hpcft resume --nodes M`` on another world size: the global batch the checkpoint was trained with is kept."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from hpcft.errors import HpcftError, RunError
from hpcft.plan.resume import plan_resume
from hpcft.spec import build_spec
from hpcft.spec.model import split_global_batch
from tests import fuzzing as F


@pytest.fixture
def run(tmp_path):
    """A run of 1 node × 2 ranks, train.batch_size 1 (global batch 2), with a checkpoint of 2 ranks."""
    F.make_workdir(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return F.make_run(tmp_path, name="resize")
    finally:
        os.chdir(cwd)


def plan(run, *overrides, nodes=None):
    rp = plan_resume(run, overrides=("train.max_steps=8", *overrides), flags={"resources.nodes": nodes},
                     python="python3", now=datetime(2026, 12, 1))  # fmt: skip
    return rp.plan.spec.train, rp.notes


def test_fewer_ranks_accumulate_more(run):
    train, notes = plan(run, "train.batch_size=4", "resources.gpus_per_node=1")
    assert (train.batch_size, train.grad_accum) == (4, 1)  # the batch the user set is taken as it is
    assert "global batch is now 4 (was 2)" in notes[0]


def test_batch_kept_across_sizes(run):
    train, notes = plan(run, "resources.gpus_per_node=1")  # 2 ranks × 1 → 1 rank: accumulate 2
    assert (train.batch_size, train.grad_accum) == (1, 2)
    assert notes == ("2 → 1 ranks: train.grad_accum 1 → 2 keeps the global batch at 2",)
    train, notes = plan(run)  # the same world size: nothing changes, nothing said
    assert (train.batch_size, train.grad_accum, notes) == (1, 1, ())


def test_a_batch_the_new_ranks_cannot_share_is_refused(run):
    with pytest.raises(RunError, match=r"global batch of 2 \(2 ranks\), which 4 ranks cannot share evenly"):
        plan(run, nodes=2)


def test_more_ranks_take_smaller_micro_batches(tmp_path, monkeypatch):
    from hpcft.plan.resume import _keep_global_batch
    from hpcft.spec.io import build_spec

    data = F.base_job()
    F.make_workdir(tmp_path)
    data["train"].update(batch_size=4, grad_accum=3, zero=3)
    monkeypatch.chdir(tmp_path)
    old = build_spec(data)
    data["resources"]["nodes"] = 4  # 2 → 8 ranks; the global batch 4 × 3 × 2 = 24 is 3 per rank
    notes: list[str] = []
    new = _keep_global_batch(old, build_spec(data), 2, "checkpoint-10", (), notes)
    assert (new.train.batch_size, new.train.grad_accum) == (3, 1)
    assert "train.batch_size 4 → 3, train.grad_accum 3 → 1 keeps the global batch at 24" in notes[0]
    assert "universal checkpoint" in notes[0]


def test_after_a_shrink_resume_asks_for_the_runs_own_nodes_again(run):
    # A node loss left the last job on 1 node and begin-job rewrote spec.yaml for it (state.json keeps the 2
    # the run asked for): the resumed job asks for 2 again, and may shrink again (--no-kill kept; issue #25/15).
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "requested_nodes": 2}))
    shrinkable = ("resources.gpus_per_node=1", "resources.min_nodes=1", "run.shrink_after=60")
    rp = plan_resume(run, overrides=("train.max_steps=8", *shrinkable), flags={"resources.nodes": None},
                     python="python3", now=datetime(2026, 12, 1))  # fmt: skip
    assert rp.plan.spec.resources.nodes == 2 and "#SBATCH --no-kill" in rp.plan.files["job.sbatch"]
    assert rp.notes[0] == "on the 2 nodes the run asked for: a node loss left its last job on 1 (--nodes N to choose)"
    rp = plan_resume(run, overrides=("train.max_steps=8", *shrinkable), flags={"resources.nodes": 1},
                     python="python3", now=datetime(2026, 12, 1))  # fmt: skip
    assert rp.plan.spec.resources.nodes == 1 and not any("asked for" in n for n in rp.notes)  # --nodes chooses


@pytest.mark.parametrize(
    "batch, micro, world, want",
    [(8, 4, 2, (4, 1)), (8, 4, 1, (4, 2)), (6, 4, 1, (3, 2)), (12, 8, 4, (3, 1)), (7, 2, 1, (1, 7))],
)
def test_a_global_batch_is_split_with_the_largest_micro_batch_that_fits(batch, micro, world, want):
    got = split_global_batch(batch, micro, world)
    assert got == want and got[0] * got[1] * world == batch and got[0] <= micro


def test_the_ranks_left_after_a_node_loss_keep_the_global_batch(capsys):
    """``hpcft.train.main.for_world``: a rank of a world smaller than spec.yaml's (torchrun's agents re-formed it
    without a dead node) trains with the same samples a step; its rank 0 says so."""
    from hpcft.train.main import for_world

    spec = build_spec({"train": {"model": "/m", "data": {"train": "/d.jsonl"}, "batch_size": 4, "grad_accum": 2},
                       "resources": {"nodes": 2, "gpus_per_node": 2, "min_nodes": 1}})  # fmt: skip
    assert (
        for_world(spec, {"WORLD_SIZE": "4", "RANK": "0"}) is spec
    )  # the planned world: 4 ranks, 4 × 2 × 4 = 32 samples a step
    left = for_world(spec, {"WORLD_SIZE": "2", "RANK": "0"})  # 1 node × 2 ranks
    assert (left.train.batch_size, left.train.grad_accum) == (4, 4)
    assert left.resources == spec.resources  # spec.yaml's job, only the batch per rank changes
    said = capsys.readouterr().err
    assert "training on 2 of 4 ranks (a node lost): train.grad_accum 2 → 4 keeps the global batch at 32" in said
    for_world(spec, {"WORLD_SIZE": "2", "RANK": "1"})
    assert capsys.readouterr().err == ""  # rank 0 only
    with pytest.raises(HpcftError, match=r"3 ranks cannot share spec\.yaml's global batch of 32"):
        for_world(spec, {"WORLD_SIZE": "3", "RANK": "0"})
