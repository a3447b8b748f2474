"""slurm/client.py against output recorded on the lab cluster (SLURM 22.05.8), no cluster needed.

Every file under tests/data/slurm/ is listed with the exact command that produced it in that
folder's README.md; each test names its command again. Expected values are read off the recordings
by hand. Commands are fed through the ``runner=`` parameter instead of a real subprocess.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcft.errors import SubmissionError
from hpcft.slurm import client
from hpcft.slurm.client import JobState, parse_sacct, parse_sbatch_parsable, parse_squeue

DATA = Path(__file__).resolve().parent.parent / "data" / "slurm"
SQUEUE_ARGV = ["squeue", "-h", "-j"]
SACCT_FLAGS = ["-o", "JobID,State,Elapsed,NNodes,NodeList,ExitCode"]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


class FakeRunner:
    """A ``client.Runner`` that answers each command name with recorded (returncode, stdout, stderr)."""

    def __init__(self, **answers: tuple[int, str, str] | type[Exception]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        answer = self.answers[argv[0]]
        if isinstance(answer, type):
            raise answer(argv[0], timeout) if answer is subprocess.TimeoutExpired else answer(argv[0])
        return subprocess.CompletedProcess(list(argv), *answer)


# --- sbatch --parsable -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("sbatch_parsable.txt", "4"),  # sbatch --parsable --wrap 'sleep 1'
        ("sbatch_parsable_cluster.txt", "5"),  # sbatch --parsable --clusters=lab --wrap 'sleep 1' → "5;lab"
        ("sbatch_parsable_array.txt", "10"),  # sbatch --parsable --array=0-2%1 … → the array's own id
    ],
)
def test_sbatch_parsable_recordings(name, job_id):
    assert parse_sbatch_parsable(recorded(name)) == job_id


def test_sbatch_parsable_reads_the_last_line_after_a_wrapper_notice():
    # Hand-written: a site wrapper printing to stdout before sbatch's own "JOBID;CLUSTER" line.
    assert parse_sbatch_parsable("site: using account ml\n77;lab\n") == "77"


@pytest.mark.parametrize(
    "text",
    [
        recorded("sbatch_plain_cluster.txt"),  # sbatch --clusters=lab (no --parsable): "Submitted batch job 15 …"
        "",
        "\n",
        ";lab\n",
        "sbatch: error: Batch job submission failed\n",
    ],
)
def test_unreadable_sbatch_output_is_a_submission_error(text):
    with pytest.raises(SubmissionError) as e:
        parse_sbatch_parsable(text, ["sbatch", "--parsable", "job.sbatch"])
    assert not isinstance(e.value, ValueError)
    assert e.value.argv == ["sbatch", "--parsable", "job.sbatch"]
    assert "expected `JOBID` or `JOBID;CLUSTER`" in str(e.value)
    assert repr(text) in str(e.value)
    assert "squeue --me" in e.value.hint


def test_submit_returns_the_id_of_a_cluster_qualified_answer():
    fake = FakeRunner(sbatch=(0, recorded("sbatch_parsable_cluster.txt"), ""))
    assert client.submit(["sbatch", "--parsable", "job.sbatch"], runner=fake) == "5"
    assert fake.calls == [["sbatch", "--parsable", "job.sbatch"]]


def test_submit_unreadable_output_names_the_real_argv():
    fake = FakeRunner(sbatch=(0, recorded("sbatch_plain_cluster.txt"), ""))
    with pytest.raises(SubmissionError, match="Submitted batch job 15 on cluster lab") as e:
        client.submit(["sbatch", "--parsable", "job.sbatch"], runner=fake)
    assert e.value.argv == ["sbatch", "--parsable", "job.sbatch"]


def test_submit_failure_carries_exit_code_stderr_and_hint():
    fake = FakeRunner(sbatch=(1, "", "sbatch: error: invalid partition specified: gpu\n"))
    with pytest.raises(SubmissionError) as e:
        client.submit(["sbatch", "--parsable", "job.sbatch"], runner=fake)
    assert (e.value.returncode, e.value.stderr) == (1, "sbatch: error: invalid partition specified: gpu")
    assert "nothing was submitted" in e.value.hint


def test_missing_sbatch_is_exit_127():
    with pytest.raises(SubmissionError, match="sbatch: command not found") as e:
        client.submit(["sbatch", "--parsable", "job.sbatch"], runner=FakeRunner(sbatch=FileNotFoundError))
    assert e.value.returncode == 127


# --- squeue -h -o '%i|%T|%M|%D|%R' -------------------------------------------------------------


def test_squeue_mixed_pending_running_and_array():
    """squeue -h -j 9,10,11,12 -o '%i|%T|%M|%D|%R' (array 10 throttled by %1, 11 waits, 12 held)."""
    assert parse_squeue(recorded("squeue_mixed.txt")) == {
        "10_[1-2%1]": JobState("10_[1-2%1]", "PENDING", "0:00", "1", "(JobArrayTaskLimit)"),
        "11": JobState("11", "PENDING", "0:00", "2", "(Resources)"),
        "12": JobState("12", "PENDING", "0:00", "1", "(JobHeldUser)"),
        "9": JobState("9", "RUNNING", "0:03", "1", "node1"),
        "10_0": JobState("10_0", "RUNNING", "0:03", "1", "node1"),
    }


def test_squeue_requeued_job_is_pending_on_begin_time():
    """squeue -h -j 9 -o '%i|%T|%M|%D|%R', 2 s after scontrol requeue 9."""
    jobs = parse_squeue(recorded("squeue_requeued.txt"))
    assert jobs == {"9": JobState("9", "PENDING", "0:00", "1", "(BeginTime)")}
    assert not jobs["9"].ended


@pytest.mark.parametrize(
    "name",
    [
        "squeue_ended.txt",  # squeue -h -j 4,5,6,7,8 … : ended jobs are not listed (exit 0)
        "squeue_unknown.txt",  # squeue -h -j 999999 … : exit 1, nothing on stdout
    ],
)
def test_squeue_empty_answers(name):
    assert recorded(name) == ""
    assert parse_squeue(recorded(name)) == {}


def test_squeue_unreadable_lines_are_skipped_and_logged(caplog):
    text = "slurm_load_jobs error: Socket timed out\n" + recorded("squeue_requeued.txt")
    assert list(parse_squeue(text)) == ["9"]
    assert "skipped a squeue line with 1 fields instead of 5" in caplog.text


# --- sacct -X -n -P -o JobID,State,Elapsed,NNodes,NodeList,ExitCode -----------------------------


def test_sacct_completed_failed_cancelled_two_node():
    """sacct -X -n -P -j 4,6,7,8 … (4 sleep 1, 6 exit 3, 7 scancel'ed, 8 on two nodes)."""
    jobs = parse_sacct(recorded("sacct_ended.txt"))
    assert jobs == {
        "4": JobState("4", "COMPLETED", "00:00:01", "1", "node1", "0:0"),
        "6": JobState("6", "FAILED", "00:00:00", "1", "node1", "3:0"),
        "7": JobState("7", "CANCELLED", "00:00:04", "1", "node1", "0:0"),  # recorded "CANCELLED by 0"
        "8": JobState("8", "COMPLETED", "00:00:02", "2", "node[1-2]", "0:0"),
    }
    assert all(j.ended for j in jobs.values())


def test_sacct_mixed_pending_running_and_array():
    """sacct -X -n -P -j 9,10,11,12 …, taken right after squeue_mixed.txt."""
    assert parse_sacct(recorded("sacct_mixed.txt")) == {
        "9": JobState("9", "RUNNING", "00:00:03", "1", "node1", "0:0"),
        "11": JobState("11", "PENDING", "00:00:00", "2", "None assigned", "0:0"),
        "12": JobState("12", "PENDING", "00:00:00", "1", "None assigned", "0:0"),
        "10_0": JobState("10_0", "RUNNING", "00:00:03", "1", "node1", "0:0"),
        "10_[1-2%1]": JobState("10_[1-2%1]", "PENDING", "00:00:00", "1", "None assigned", "0:0"),
    }


def test_sacct_array_tasks():
    """sacct -X -n -P -j 10 … after the array finished: one line per task, none for "10" itself."""
    assert parse_sacct(recorded("sacct_array.txt")) == {
        "10_0": JobState("10_0", "COMPLETED", "00:00:08", "1", "node1", "0:0"),
        "10_1": JobState("10_1", "COMPLETED", "00:00:08", "1", "node1", "0:0"),
        "10_2": JobState("10_2", "COMPLETED", "00:00:08", "1", "node1", "0:0"),
    }


def test_sacct_steps_are_skipped():
    """sacct -n -P -j 8 … (no -X): the job, 8.batch, 8.0 and 8.1 (two srun steps)."""
    assert parse_sacct(recorded("sacct_steps.txt")) == {
        "8": JobState("8", "COMPLETED", "00:00:02", "2", "node[1-2]", "0:0"),
    }


def test_sacct_extern_step_is_skipped():
    # Hand-written: the lab runs without PrologFlags=Contain, so it records no "JOBID.extern" step;
    # with it, sacct prints one per job (slurm.conf(5), PrologFlags=Contain) in this same shape.
    text = "8|COMPLETED|00:00:02|2|node[1-2]|0:0\n8.extern|COMPLETED|00:00:02|2|node[1-2]|0:0\n"
    assert list(parse_sacct(text)) == ["8"]


def test_sacct_requeued_pending_is_not_ended():
    """sacct -X -n -P -j 9 …, 2 s after scontrol requeue 9: sacct says REQUEUED, squeue PENDING."""
    jobs = parse_sacct(recorded("sacct_requeued_pending.txt"))
    assert jobs == {"9": JobState("9", "REQUEUED", "00:00:07", "1", "node1", "0:0")}
    assert not jobs["9"].ended


def test_sacct_requeued_running_again():
    """sacct -X -n -P -j 9 … after scontrol update JobId=9 StartTime=now: only the newest run."""
    assert parse_sacct(recorded("sacct_requeued_running.txt")) == {
        "9": JobState("9", "RUNNING", "00:00:03", "1", "node1", "0:0"),
    }


def test_sacct_duplicates_keep_the_newest_run():
    """sacct -X -n -P -D -j 9,11,12 …: 9 appears twice (REQUEUED, then CANCELLED by 0), not adjacent."""
    jobs = parse_sacct(recorded("sacct_requeued_duplicates.txt"))
    assert jobs == {
        "9": JobState("9", "CANCELLED", "00:00:21", "1", "node1", "0:0"),
        "11": JobState("11", "COMPLETED", "00:00:05", "2", "node[1-2]", "0:0"),
        "12": JobState("12", "CANCELLED", "00:00:00", "1", "None assigned", "0:0"),
    }


def test_sacct_empty_and_unreadable(caplog):
    assert parse_sacct("") == {}
    text = "sacct: error: Problem talking to the database\n4|COMPLETED|00:00:01\n"
    assert parse_sacct(text) == {}
    assert "skipped a sacct line with 3 fields instead of 6" in caplog.text


def test_sacct_empty_state_is_unknown():
    assert parse_sacct("4||00:00:01|1|node1|0:0\n")["4"].state == "UNKNOWN"


# --- query_jobs: squeue first, sacct for what squeue no longer lists -----------------------------


def test_query_jobs_asks_sacct_only_for_jobs_squeue_did_not_list():
    fake = FakeRunner(squeue=(0, recorded("squeue_requeued.txt"), ""), sacct=(0, recorded("sacct_ended.txt"), ""))
    jobs = client.query_jobs(["4", "6", "7", "8", "9"], runner=fake)
    assert fake.calls == [
        [*SQUEUE_ARGV, "4,6,7,8,9", "-o", "%i|%T|%M|%D|%R"],
        ["sacct", "-X", "-n", "-P", "-j", "4,6,7,8", *SACCT_FLAGS],
    ]
    assert {j: s.state for j, s in jobs.items()} == {
        "9": "PENDING",
        "4": "COMPLETED",
        "6": "FAILED",
        "7": "CANCELLED",
        "8": "COMPLETED",
    }


def test_query_jobs_all_live_skips_sacct():
    fake = FakeRunner(squeue=(0, recorded("squeue_mixed.txt"), ""))
    jobs = client.query_jobs(["9", "11", "12"], runner=fake)
    assert [c[0] for c in fake.calls] == ["squeue"]
    assert jobs["9"] == JobState("9", "RUNNING", "0:03", "1", "node1")


def test_query_jobs_accepts_array_tasks_and_drops_other_ids():
    fake = FakeRunner(squeue=(0, recorded("squeue_mixed.txt"), ""))
    jobs = client.query_jobs(["10_0", "", "local-1234", "10_[1-2%1]", "9;lab"], runner=fake)
    assert fake.calls == [[*SQUEUE_ARGV, "10_0", "-o", "%i|%T|%M|%D|%R"]]
    assert jobs["10_0"].state == "RUNNING"


def test_query_jobs_unknown_everywhere_is_empty():
    """squeue -h -j 999999 … exits 1 with "Invalid job id specified": an answer, not an error."""
    squeue = (1, recorded("squeue_unknown.txt"), recorded("squeue_unknown.stderr.txt"))
    fake = FakeRunner(squeue=squeue, sacct=(0, "", ""))
    assert client.query_jobs(["999999"], runner=fake) == {}
    assert [c[0] for c in fake.calls] == ["squeue", "sacct"]


@pytest.mark.parametrize("failure", [FileNotFoundError, subprocess.TimeoutExpired])
def test_query_jobs_without_answers_is_empty(failure):
    assert client.query_jobs(["4"], runner=FakeRunner(squeue=failure, sacct=failure)) == {}


def test_query_jobs_without_valid_ids_runs_nothing():
    fake = FakeRunner()
    assert client.query_jobs(["abc", ""], runner=fake) == {}
    assert fake.calls == []


# --- scancel / scontrol ------------------------------------------------------------------------


def test_cancel_and_requeue_argv():
    fake = FakeRunner(scancel=(0, "", ""), scontrol=(0, "", ""))
    client.cancel("9", runner=fake)
    client.requeue("9", runner=fake)
    assert fake.calls == [["scancel", "9"], ["scontrol", "requeue", "9"]]


def test_requeue_refused_is_a_submission_error():
    # Hand-written stderr: SLURM's ESLURM_DISABLED text, what scontrol prints for a job without --requeue.
    fake = FakeRunner(scontrol=(1, "", "Requested operation is presently disabled for job 4\n"))
    with pytest.raises(SubmissionError, match="presently disabled") as e:
        client.requeue("4", runner=fake)
    assert e.value.argv == ["scontrol", "requeue", "4"]


def test_parse_sacct_steps_names_the_step_slurm_ended_out_of_memory():
    steps = client.parse_sacct_steps((DATA / "sacct_steps_oom.txt").read_text())
    assert steps == [
        client.StepState("28.batch", "COMPLETED", "1240K", "node1"),
        client.StepState("28.0", "OUT_OF_MEMORY", "2984K", "node1"),
    ]


# --- is a job live? "not known" is an answer, "no answer" is not ------------------------------------

# squeue's words when slurmctld is down (hand-written from SLURM 22.05's message, not recorded: stopping the
# lab's controller would disturb every other test).
CONTROLLER_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"


def test_a_job_squeue_lists_is_returned_and_one_it_does_not_know_is_none():
    fake = FakeRunner(squeue=(0, recorded("squeue_mixed.txt"), ""))
    assert client.queued_job("9", runner=fake).state in ("RUNNING", "PENDING")
    fake = FakeRunner(squeue=(1, recorded("squeue_unknown.txt"), recorded("squeue_unknown.stderr.txt")))
    assert client.queued_job("999999", runner=fake) is None
    assert fake.calls == [["squeue", "-h", "-j", "999999", "-o", client.SQUEUE_FORMAT]]


@pytest.mark.parametrize("answer", [(1, "", CONTROLLER_DOWN), subprocess.TimeoutExpired, FileNotFoundError])
def test_no_answer_from_squeue_is_an_error_not_an_ended_job(answer):
    with pytest.raises(client.RunError) as e:
        client.queued_job("9", runner=FakeRunner(squeue=answer))
    assert "squeue did not answer about job 9" in e.value.message and "nothing was changed" in str(e.value.hint)


def test_resume_refuses_when_slurm_does_not_answer_and_changes_nothing(tmp_path, monkeypatch):
    # hpcft resume on a run whose job may still run: no answer must never start a second job (issue #25, 9).
    from hpcft.backends import actions
    from hpcft.rundir import store

    run = tmp_path / "run"
    run.mkdir()
    store.write_atomic(run / "state.json", '{"backend": "sbatch", "jobs": [{"id": "9"}]}')
    before = (run / "state.json").read_text()
    monkeypatch.setattr(client, "run_process", FakeRunner(squeue=(1, "", CONTROLLER_DOWN)))
    with pytest.raises(client.RunError, match="squeue did not answer about job 9"):
        actions.refuse_if_live(run)
    assert (run / "state.json").read_text() == before
    monkeypatch.setattr(client, "run_process", FakeRunner(squeue=(1, "", recorded("squeue_unknown.stderr.txt"))))
    actions.refuse_if_live(run)  # SLURM answered that it does not know the job: not live
