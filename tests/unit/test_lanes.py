"""``make test``'s lanes: every test that uses the SLURM lab runs in one lane, one after another."""

from __future__ import annotations

from tests.conftest import LAB_LANE, lane_of


def test_lab_tests_share_one_lane_and_the_others_go_by_module():
    assert (
        lane_of("tests/cluster/test_drills.py::test_a_warning[x]") == lane_of("tests/cluster/test_trl.py::t") == "lab"
    )
    assert lane_of("tests/unit/test_chain.py::test_x") == "tests/unit/test_chain.py"
    assert lane_of("tests/train/test_zero.py::test_y[2]") == "tests/train/test_zero.py"


def test_every_test_that_uses_the_lab_is_in_the_lab_lane(request):
    # A lab test elsewhere would run beside the lab lane: two jobs on the two nodes at once.
    misplaced = [
        i.nodeid for i in request.session.items if "lab" in i.fixturenames and not i.nodeid.startswith(LAB_LANE)
    ]
    assert misplaced == []
