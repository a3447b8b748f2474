"""``run.restart: chain``: the next job is submitted once, whatever sbatch does (issue #25, item 10)."""

from __future__ import annotations

import pytest

from hpcft.errors import SubmissionError
from hpcft.node import after_job
from hpcft.rundir import store


@pytest.fixture
def run(tmp_path, monkeypatch):
    run = tmp_path / "run-1"
    run.mkdir()
    store.write_atomic(run / "state.json", '{"backend": "sbatch", "jobs": [{"id": "7"}]}')
    monkeypatch.setattr(after_job.time, "sleep", lambda s: None)
    return run


class Sbatch:
    """Answers each ``sbatch`` with the next of ``answers`` (a job id, or an exception to raise)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, argv, hint=""):
        self.calls.append((argv, hint))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _refused():
    return SubmissionError(["sbatch"], 1, "sbatch: error: Batch job submission failed: Socket timed out", None)


def test_a_refused_sbatch_is_tried_again_and_the_job_recorded(run, monkeypatch):
    sbatch = Sbatch(_refused(), "8")
    monkeypatch.setattr(after_job.client, "submit", sbatch)
    monkeypatch.setattr(after_job.client, "user_jobs", lambda prefix: {"7": str(run)})  # only this job
    assert after_job.chain_next(run, "7") == "8"
    assert len(sbatch.calls) == 2 and "--dependency=afterany:7,singleton" in sbatch.calls[0][0]
    assert [j["id"] for j in store.read_state(run)["jobs"]] == ["7", "8"]


def test_an_sbatch_that_submitted_without_answering_is_not_repeated(run, monkeypatch):
    sbatch = Sbatch(SubmissionError(["sbatch"], -1, "no answer within 60 s", None))
    monkeypatch.setattr(after_job.client, "submit", sbatch)
    monkeypatch.setattr(after_job.client, "user_jobs", lambda prefix: {"7": str(run), "9": str(run), "5": "/other"})
    assert after_job.chain_next(run, "7") == "9" and len(sbatch.calls) == 1


def test_a_chain_that_cannot_submit_says_the_run_is_kept(run, monkeypatch):
    sbatch = Sbatch(*[_refused()] * after_job.CHAIN_TRIES)
    monkeypatch.setattr(after_job.client, "submit", sbatch)
    monkeypatch.setattr(after_job.client, "user_jobs", lambda prefix: {})
    with pytest.raises(SubmissionError):
        after_job.chain_next(run, "7")
    assert len(sbatch.calls) == after_job.CHAIN_TRIES
    hint = sbatch.calls[0][1]
    assert "checkpoints are kept" in hint and "hpcft resume run-1" in hint and "removed" not in hint
