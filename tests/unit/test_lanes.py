"""``make test``'s lanes: the tests on each of the lab's three clusters run in a lane of their own, in order."""

from __future__ import annotations

from tests.conftest import LAB_LANE, LAB_MODULES, LABS, REPO, TRAIN_FIRST, lane_of


def test_each_lab_cluster_is_one_lane_and_the_others_go_by_module():
    assert lane_of("tests/cluster/test_drills.py::test_a_warning[x]") == lane_of("tests/cluster/test_preemption.py::t")
    assert lane_of("tests/cluster/test_drills.py::test_a_warning[x]") == "lab"
    assert lane_of("tests/cluster/test_trl.py::t") == lane_of("tests/cluster/test_launchers.py::t[srun]") == "lab2"
    assert lane_of("tests/cluster/test_resize.py::t[2]") == lane_of("tests/cluster/test_warning_lead.py::t") == "lab3"
    assert lane_of("tests/unit/test_chain.py::test_x") == "tests/unit/test_chain.py"
    assert lane_of("tests/train/test_zero.py::test_y[2]") == "tests/train/test_zero.py"


def test_the_other_lanes_name_modules_that_exist_once():
    # A misspelt name would silently move its module back into the first lane.
    named = [m for modules in LAB_MODULES.values() for m in modules]
    assert sorted(m for m in named if not (REPO / LAB_LANE / f"{m}.py").is_file()) == []
    assert len(named) == len(set(named))
    assert sorted(m for m in TRAIN_FIRST if not (REPO / "tests" / "train" / f"{m}.py").is_file()) == []


def test_the_lanes_clusters_are_disjoint_node_pairs():
    nodes = [n for lab in LABS.values() for n in lab.nodes]
    assert len(nodes) == len(set(nodes)) == 6
    assert [lab.nodelist for lab in LABS.values()] == ["node[1-2]", "node[3-4]", "node[5-6]"]


def test_every_test_that_uses_the_lab_is_in_a_lab_lane(request):
    # A lab test elsewhere would run beside the lab lanes: two jobs on the same two nodes at once.
    misplaced = [
        i.nodeid for i in request.session.items if "lab" in i.fixturenames and not i.nodeid.startswith(LAB_LANE)
    ]
    assert misplaced == []


def test_runs_dir_finds_the_jobs_it_cancels_after_a_test(tmp_path):
    # A drill that fails half-way must not leave its job training on (the fixture once read a key state.json
    # never had, and a failed 100000-step drill ran on through the rest of the test command).
    from hpcft.rundir import store
    from tests import fuzzing as F
    from tests.conftest import runs_jobs

    F.make_workdir(tmp_path)
    run = F.make_run(tmp_path, name="left")
    store.record_job(run, "4242", nodes="node1")
    store.record_job(run, "4243_1", nodes="node2")
    assert sorted(runs_jobs(run.parent)) == ["4242", "4243_1"]
