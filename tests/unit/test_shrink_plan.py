"""Continuing on fewer nodes after a node loss (``resources.min_nodes``, ``run.shrink_after``): the pure parts.

The event itself (a node whose processes all die) is tests/cluster/test_shrink.py; here the spec's rules,
the ``--no-kill`` line, the decision after the loss, the batch environment of the nodes left, SLURM's
answers recorded on the lab during that drill, and the plan that follows the allocation.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import yaml

from hpcft.errors import ConfigError
from hpcft.plan.requeue import Decision, after_node_loss
from hpcft.plan.resume import plan_resize
from hpcft.slurm import client
from hpcft.slurm.env import allocation_left
from hpcft.spec import build_spec
from tests import fuzzing as F
from tests.unit.test_resize_plan import run
from tests.unit.test_script_plan import PY, spec_of
from tests.unit.test_slurm_client import recorded

NOW = datetime(2026, 12, 1)
__all__ = ["run"]  # the fixture: a run of 1 node × 2 ranks, batch_size 1, with a checkpoint of 2 ranks


def test_no_kill_only_where_the_job_may_shrink():
    from hpcft.plan.plan import make_plan

    def script(**resources_run):
        spec = spec_of(resources={"nodes": 4, **resources_run.get("resources", {})}, run=resources_run.get("run", {}))
        return make_plan(spec, python=PY, now=NOW).files["job.sbatch"]

    assert "#SBATCH --no-kill" in script(resources={"min_nodes": 2}, run={"shrink_after": 600})
    assert "--no-kill" not in script()
    assert "--no-kill" not in script(resources={"min_nodes": 4}, run={"shrink_after": 600})  # cannot shrink


PAIR_HINT = "(HINT: e.g. -o resources.min_nodes=1 -o run.shrink_after=600)"


@pytest.mark.parametrize(
    "resources, run, launch, says, advice",
    [
        ({"nodes": 2, "min_nodes": 1}, {}, {"launcher": "accelerate"}, "resources.min_nodes: has no effect here: "
         "the ranks left after a node loss train on in the job only with hpcft's trainer under torchrun", PAIR_HINT),
        ({"nodes": 2}, {"shrink_after": 60}, {}, "run.shrink_after: has no effect without resources.min_nodes",
         PAIR_HINT),
        ({"nodes": 2, "min_nodes": 3}, {"shrink_after": 60}, {}, "resources.min_nodes: 3 is more than "
         "resources.nodes (2)", "(HINT: at most 2)"),
        ({"nodes": 2, "min_nodes": 1}, {"shrink_after": 60}, {"backend": "submitit"}, "run.shrink_after: needs the "
         "sbatch backend", "launch.backend is submitit (HINT: --backend sbatch)"),
        ({"nodes": 2, "min_nodes": 1}, {"shrink_after": -1}, {}, "run.shrink_after: must be at least 0", "got -1"),
    ],
)  # fmt: skip
def test_bad_shrink_settings_are_clear_errors(resources, run, launch, says, advice):
    data = {"train": {"model": "/m", "data": {"train": "/d.jsonl"}}, "resources": resources, "run": run,
            "launch": {"backend": "sbatch", **launch}}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        build_spec(data)
    message = str(e.value)
    # What is wrong, and what to set instead (a hint) or what was given.
    assert "1 problem in the job description" in message and says in message and advice in message


def survivors(resources: dict, train: dict | None = None, launch: dict | None = None, run: dict | None = None):
    data = {"train": {"model": "/m", "data": {"train": "/d.jsonl"}, **(train or {})}, "resources": resources,
            "launch": {"backend": "sbatch", **(launch or {})}, "run": run or {}}  # fmt: skip
    if "min_nodes" in resources:  # valid where the nodes left may not train on in the job
        data["run"] = {"shrink_after": 60, **data["run"]}
    return build_spec(data).survivor_nodes


@pytest.mark.parametrize(
    "resources, train, want",
    [
        ({"nodes": 2, "min_nodes": 1}, {}, 1),  # a global batch of 2: 1 rank accumulates 2
        ({"nodes": 4, "min_nodes": 2, "gpus_per_node": 2}, {"batch_size": 3, "grad_accum": 2}, 2),  # 48: 4, 6, 8 ranks
        ({"nodes": 4, "min_nodes": 2}, {}, None),  # 4 samples: 3 nodes cannot share them
        ({"nodes": 4, "min_nodes": 1}, {"batch_size": 2}, None),  # 8: 1, 2 and 4 can, 3 cannot
        ({"nodes": 6, "min_nodes": 3}, {"batch_size": 5}, 5),  # 30: 3, 5 and 6 can, 4 cannot: the least is 5
        ({"nodes": 2, "min_nodes": 2}, {}, None),  # no node may be lost
        ({"nodes": 2}, {}, None),  # off unless asked for
    ],
)  # fmt: skip
def test_the_nodes_left_train_on_down_to_where_every_world_keeps_the_global_batch(resources, train, want):
    assert survivors(resources, train) == want


@pytest.mark.parametrize(
    "train, launch, run",
    [({"zero": 2}, {}, {}), ({}, {"command": ["t.py"]}, {}), ({}, {"launcher": "accelerate"}, {}),
     ({}, {"rdzv": "static"}, {}), ({}, {}, {"restart_in_job": False})],
)  # fmt: skip
def test_the_world_stays_fixed_where_the_batch_per_rank_is_not_hpcfts_to_change(train, launch, run):
    """A ZeRO config fixes the batch per rank; a user's command sizes its own; only torchrun's c10d agents re-form
    a world in the job, and only when they restart ranks at all."""
    assert survivors({"nodes": 2, "min_nodes": 1}, train, launch, run) is None


def test_min_nodes_alone_is_a_valid_job_where_the_nodes_left_train_on():
    data = {"train": {"model": "/m", "data": {"train": "/d.jsonl"}}, "resources": {"nodes": 2, "min_nodes": 1},
            "launch": {"backend": "sbatch"}}  # fmt: skip
    assert build_spec(data).survivor_nodes == 1 and not build_spec(data).shrinks


CRASH = Decision("requeue", "launcher failed with 137; requeue 1 of 2", 137)


def test_after_a_node_loss():
    shrink = after_node_loss(CRASH, ["node2"], back=False, left=3, min_nodes=2, waited=600)
    assert shrink.action == "shrink" and shrink.exit_code == 137
    assert shrink.reason == ("node2 lost (the launcher exited with 137) and not back after 600 s (run.shrink_after): "
                             "continuing on the 3 node(s) left")  # fmt: skip
    back = after_node_loss(CRASH, ["node2"], back=True, left=3, min_nodes=2, waited=40)
    assert back.action == "requeue" and back.reason.endswith("node2 came back within 40 s: requeued at full size")
    few = after_node_loss(CRASH, ["node2", "node3"], back=False, left=1, min_nodes=2, waited=600)
    assert few.action == "requeue" and "1 node(s) left, fewer than resources.min_nodes (2)" in few.reason
    why = "demo trains with a global batch of 512 (32 ranks), which 24 ranks cannot share evenly"
    unfit = after_node_loss(CRASH, ["node2"], back=False, left=3, min_nodes=2, waited=600, unfit=why)
    assert unfit.action == "requeue" and unfit.reason.endswith(f"left: {why}; requeued at full size")


def test_the_batch_environment_of_the_nodes_left():
    # What sbatch set for `--nodes=3 --ntasks-per-node=1` (as echoed by a lab job), node2 then lost.
    env = {"SLURM_JOB_NODELIST": "node[1-3]", "SLURM_NODELIST": "node[1-3]", "SLURM_JOB_NUM_NODES": "3",
           "SLURM_NNODES": "3", "SLURM_NTASKS": "3", "SLURM_NPROCS": "3", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_TASKS_PER_NODE": "1(x3)", "SLURM_JOB_CPUS_PER_NODE": "8(x3)", "SLURM_JOB_ID": "7"}  # fmt: skip
    left = allocation_left(env, ["node1", "node3"])
    assert {k: left[k] for k in env} == {
        "SLURM_JOB_NODELIST": "node[1,3]", "SLURM_NODELIST": "node[1,3]", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_CPUS_PER_NODE": "8(x2)", "SLURM_JOB_ID": "7",
    }  # fmt: skip
    one = allocation_left({**env, "SLURM_JOB_CPUS_PER_NODE": "8,4(x2)"}, ["node1"])
    assert (one["SLURM_TASKS_PER_NODE"], one["SLURM_JOB_CPUS_PER_NODE"]) == ("1", "8,4(x2)")  # mixed: kept


def test_node_states_recorded_during_the_drill():
    down = client.parse_node_states(recorded("sinfo_node_down.txt"))
    assert down == {"node1": "mixed", "node2": "down*"}
    assert down["node2"] not in client.USABLE_NODE_STATES and down["node1"] in client.USABLE_NODE_STATES
    assert set(client.parse_node_states(recorded("sinfo_idle.txt")).values()) <= client.USABLE_NODE_STATES


def test_a_shrunk_job_is_one_job_in_sacct_and_its_last_record_wins():
    (job,) = client.parse_sacct(recorded("sacct_shrunk.txt")).values()
    assert (job.job_id, job.state, job.nodes, job.reason_or_nodelist) == ("886", "COMPLETED", "1", "node1")


def spec_yaml(run: Path, **changes) -> None:
    data = yaml.safe_load((run / "spec.yaml").read_text())
    for dotted, value in changes.items():
        F.set_path(data, dotted.replace("__", "."), value)
    (run / "spec.yaml").write_text(yaml.safe_dump(data))


def test_the_plan_follows_the_allocation_and_keeps_the_global_batch(run):
    spec_yaml(run, resources__nodes=2, train__batch_size=2, train__grad_accum=3)  # 4 ranks: global batch 24
    rp = plan_resize(run, 1, python="python3", now=NOW)  # the job was left 1 node of 2 (2 ranks)
    assert (rp.plan.spec.resources.nodes, rp.plan.spec.train.batch_size, rp.plan.spec.train.grad_accum) == (1, 2, 6)
    assert rp.notes == ("4 → 2 ranks: train.grad_accum 3 → 6 keeps the global batch at 24",)
    written = yaml.safe_load(rp.plan.files["spec.yaml"])
    assert written["train"]["grad_accum"] == 6 and written["resources"]["nodes"] == 1
    (run / "spec.yaml").write_text(rp.plan.files["spec.yaml"])
    back = plan_resize(run, 2, python="python3", now=NOW)  # the requeued job has both nodes again
    assert (back.plan.spec.train.batch_size, back.plan.spec.train.grad_accum) == (2, 3)


def test_a_batch_the_nodes_left_cannot_share_is_refused(run):
    spec_yaml(run, resources__nodes=3, resources__gpus_per_node=1)  # 3 ranks × batch 1 = 3, on 2 ranks
    from hpcft.errors import RunError

    with pytest.raises(RunError, match=r"global batch of 3 \(3 ranks\), which 2 ranks cannot share evenly"):
        plan_resize(run, 2, python="python3", now=NOW)
