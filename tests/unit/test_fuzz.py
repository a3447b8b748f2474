"""Property-based fuzzing of bad input (Hypothesis): no traceback, nothing written for a rejected job,
no #SBATCH line lost, damaged run directories reported and never hiding a healthy run.

The properties and strategies live in ``tests/fuzzing.py``; ``benchmarks/fuzz.py`` runs the same ones for
100,000 cases. Here a fixed sample (``derandomize``) keeps CI reproducible: 900 cases
(500 jobs, 400 damaged run directories).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzzing as F


def ci_settings(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return F.make_workdir(tmp_path_factory.mktemp("fuzz-jobs"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("fuzz-runs")
    damaged = F.make_run(F.make_workdir(root / "a"))
    healthy = F.make_run(F.make_workdir(root / "b"), "healthy")
    return damaged, healthy, root / "work"


def test_job_files_overrides_and_flags(work):
    @ci_settings(500)
    @given(F.job_texts(), st.lists(F.override, max_size=2), F.flag_args, st.lists(F.hostile_text, max_size=2),
           st.booleans())  # fmt: skip
    def case(text, overrides, flags, command, also_plan):
        F.check_job(work, text, overrides, flags, command, also_plan)

    case()


def test_damaged_run_directories(runs):
    damaged, healthy, work = runs

    @ci_settings(400)
    @given(st.lists(F.damages(), min_size=1, max_size=3), st.sampled_from(F.OPS))
    def case(damage_list, op):
        F.check_damaged(damaged, healthy, work, damage_list, list(op))

    case()


def test_the_harness_sees_a_traceback():
    """The properties can fail: an exception that is not an exit is reported with its traceback."""
    out = F.Outcome(["status"], 1, "", "Traceback (most recent call last):\n ValueError")
    with pytest.raises(AssertionError, match="raised"):
        F.assert_clean(out)
    with pytest.raises(AssertionError, match="after the first command"):
        F.assert_header_intact("#!/bin/bash\n#SBATCH --nodes=1\nset -u\n#SBATCH --requeue\n")
