"""Pure helpers of status, logs, plot and doctor: metrics → progress/ETA/restarts, series, log filters, rows."""

from __future__ import annotations

import json
import subprocess

import pytest

from hpcft.ops import logs, plot
from hpcft.ops import status as monitor
from hpcft.slurm import client
from hpcft.tools import doctor, doctor_fs
from tests.conftest import import_or_require
from tests.unit.test_slurm_client import recorded

# What hpcft.train.metrics writes: a first job, requeued once (restart 1) from checkpoint 10, then a resume job.
METRICS = [
    {"event": "train_begin", "max_steps": 30, "start_step": 0, "job_id": "7", "restart": 0, "time": 100.0},
    *[{"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 1000.0 + s, "time": 100.0 + 2 * s} for s in range(1, 13)],
    {"step": 10, "eval_loss": 4.2, "time": 121.0},
    {"event": "train_begin", "max_steps": 30, "start_step": 10, "job_id": "7", "restart": 1, "time": 200.0},
    *[{"step": s, "loss": 4.0 - s / 100, "tokens_per_s": 2000.0, "time": 200.0 + (s - 10)} for s in range(11, 21)],
    {"step": 20, "eval_loss": 3.9, "time": 211.0},
    {"event": "train_begin", "max_steps": 30, "start_step": 20, "job_id": "9", "restart": 0, "time": 300.0},
]


def test_summary_takes_newest_step_and_eval():
    s = monitor.summarize_metrics(METRICS)
    assert (s["step"], s["total_steps"], s["eval_loss"], s["tokens_per_s"]) == (20, 30, 3.9, 2000.0)
    assert s["loss"] == pytest.approx(3.8)


def test_eta_uses_the_speed_since_the_last_restart():
    # Since the second train_begin: steps 11..20 one second apart → 10 steps left → 10 s.
    assert monitor.estimate_eta(METRICS[:-1], 30) == pytest.approx(10.0)
    assert monitor.estimate_eta(METRICS, 30) is None  # just restarted: no speed yet
    assert monitor.estimate_eta(METRICS[:-1], None) is None


def test_restarts_count_requeues_and_later_jobs():
    state = {"jobs": [{"id": "7"}, {"id": "9"}]}
    assert monitor.count_restarts(state, METRICS) == 2  # requeue of job 7 + resume as job 9
    assert monitor.count_restarts({"jobs": [{"id": "7"}]}, []) == 0
    # A requeue recorded in state.json before the new attempt reached train_begin still counts.
    assert monitor.count_restarts({"jobs": [{"id": "7"}], "restarts": 1}, METRICS[:1]) == 1
    in_job = {"jobs": [{"id": "7"}], "events": [{"job": "7", "kind": "in-job restart"}]}
    assert monitor.count_restarts(in_job, METRICS[:1]) == 1


def test_format_duration():
    assert [monitor.format_duration(s) for s in (None, 42, 185, 3725)] == ["-", "42s", "3m05s", "1h02m"]


def test_plot_series_keep_the_newest_value_per_step_and_mark_restarts():
    data = plot.extract_series(METRICS)
    assert data.restarts == [10, 20]
    assert [s for s, _ in data.train_loss] == list(range(1, 21))
    assert dict(data.train_loss)[11] == pytest.approx(3.89)  # the value logged after the restart wins
    assert data.eval_loss == [(10, 4.2), (20, 3.9)]
    assert dict(data.tokens_per_s)[12] == 2000.0


def test_plot_writes_a_png(tmp_path):
    image = import_or_require("matplotlib.image")  # the [plot] extra: required under CI=true
    out = plot.write_plot(plot.extract_series(METRICS), tmp_path / "m.png", "run")
    assert out == tmp_path / "m.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(out).shape == (600, 900, 4)  # a 9 x 6 inch figure at 100 dpi, RGBA


def test_file_tail_holds_torn_lines_and_survives_truncation(tmp_path):
    f = tmp_path / "out"
    tail = logs.FileTail(f)
    assert tail.read() == ""
    f.write_text("one\ntw")
    assert tail.read() == "one\n"
    with open(f, "a") as fh:
        fh.write("o\n")
    assert tail.read() == "two\n"
    f.write_text("new\n")  # truncated and rewritten
    assert tail.read() == "new\n"
    f.write_text("new\nend")
    assert tail.read(final=True) == "end"


def test_node_filter_follows_ranks_that_moved_between_nodes(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "rank-0.log").write_text(
        "t rank0 hpcft.train INFO rank 0 of 2 on node1: job 7 restart 0\nt a\n"
        "t rank0 hpcft.train INFO rank 0 of 2 on node2: job 9 restart 0\nt b\n"
    )
    (log_dir / "rank-1.log").write_text("t rank1 hpcft.train INFO rank 1 of 2 on node2: job 7 restart 0\nt c\n")
    text = logs.NodeFilter(tmp_path, "node2").read()
    assert "[rank-0] t b" in text and "[rank-1] t c" in text and "t a" not in text
    only_job_9 = logs.NodeFilter(tmp_path, "node2", job="9").read()
    assert "t b" in only_job_9 and "t c" not in only_job_9
    none = logs.NodeFilter(tmp_path, "node3")
    assert none.read() == "" and "ranks ran on: node1, node2" in none.empty_note()


def test_node_logs_give_each_rank_its_lines_and_each_node_its_ranks(tmp_path):
    """Ranks of a node share logs/node-HOST.log; every line (a traceback's too) starts with its rank."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "node-node1.log").write_text(
        "2026-01-01 10:00:00,1 rank0 hpcft.train INFO rank 0 of 4 on node1: job 7 restart 0\n"
        "2026-01-01 10:00:00,2 rank1 hpcft.train INFO rank 1 of 4 on node1: job 7 restart 0\n"
        "2026-01-01 10:00:01,0 rank1 hpcft.train ERROR uncaught exception\n"
        "2026-01-01 10:00:01,0 rank1 | Traceback (most recent call last):\n"
        "2026-01-01 10:00:01,0 rank1 | ValueError: boom\n"
        "2026-01-01 10:00:02,0 rank0 hpcft.train INFO step 1\n"
    )
    (log_dir / "node-node2.log").write_text(
        "2026-01-01 10:00:00,3 rank2 hpcft.train INFO rank 2 of 4 on node2: job 7 restart 0\n"
    )
    assert logs.rank_text(tmp_path, 1).splitlines()[1:] == [
        "2026-01-01 10:00:01,0 rank1 hpcft.train ERROR uncaught exception",
        "2026-01-01 10:00:01,0 rank1 | Traceback (most recent call last):",
        "2026-01-01 10:00:01,0 rank1 | ValueError: boom",
    ]
    assert "step 1" in logs.rank_text(tmp_path, 0) and "step 1" not in logs.rank_text(tmp_path, 1)
    node2 = logs.NodeFilter(tmp_path, "node2").read()
    assert node2.startswith("[rank-2] ") and "rank 0 of" not in node2


def test_job_output_names_the_job_file(tmp_path):
    state = {"backend": "sbatch", "jobs": [{"id": "7"}, {"id": "9"}]}
    assert logs.job_output(tmp_path, state).name == "slurm-9.out"
    assert logs.job_output(tmp_path, state, "7").name == "slurm-7.out"
    with pytest.raises(Exception, match="has no job 8; its jobs: 7, 9"):
        logs.job_output(tmp_path, state, "8")


def test_doctor_without_report_names_the_node_that_cannot_see_the_run_dir():
    output = (
        "hpcft node node1: python -m torch.distributed.run ...\n"
        "hpcft node: preflight failed: node node2: cannot see the run directory /shared/runs/doctor-1\n"
        "HINT: the runs directory must be on a filesystem shared by all nodes (run.runs_dir)\n"
        "srun: error: node2: task 1: Exited with exit code 3\n"
    )
    rows = doctor.summarize(None, {"node1": {"host": "node1"}}, ["node1", "node2"], "FAILED", output)
    assert doctor.failed(rows)
    by_node = {r.node: r for r in rows}
    assert by_node["node2"].check == "node preflight" and "cannot see the run directory" in by_node["node2"].detail
    assert "shared by all nodes" in by_node["node2"].hint
    assert by_node["node1"].status == "pass"


def test_doctor_with_report_adds_a_failure_when_the_job_failed():
    report = {"checks": [{"check": "all-reduce", "node": "all", "status": "pass", "detail": "ok", "hint": ""}]}
    assert not doctor.failed(doctor.summarize(report, {}, [], "COMPLETED", ""))
    assert doctor.failed(doctor.summarize(report, {}, [], "FAILED", ""))
    assert json.loads(json.dumps(report)) == report  # the report is plain JSON, as the probe writes it


def test_shared_dir_problems_list_the_first_failure_first(tmp_path):
    peer = {
        "host": "node2",
        "read": "No such file or directory: /x",
        "rename": "ok",
        "lock_held": "free",
        "lock_free": "free",
    }
    problems = doctor_fs.peer_problems(peer, "node1", tmp_path / ".hpcft-doctor-1")
    assert [step for step, _ in problems] == ["read", "rename", "lock"]
    assert "cannot read the marker node1 wrote" in problems[0][1]


def test_mount_of_picks_the_longest_mount_point():
    mounts = "rootfs / ext4 rw 0 0\nsrv:/home /home nfs4 rw 0 0\n/dev/nvme0n1 /local/nvme xfs rw 0 0\n"
    assert doctor_fs.mount_of("/home/me/runs", mounts) == ("/home", "nfs4")
    assert doctor_fs.mount_of("/local/nvme/ds", mounts) == ("/local/nvme", "xfs")
    assert doctor_fs.mount_of("/local/nvmex", mounts) == ("/", "ext4")
    assert doctor_fs.is_network_fs("nfs4") and doctor_fs.is_network_fs("fuse.sshfs")
    assert not doctor_fs.is_network_fs("xfs")


@pytest.mark.parametrize(
    "sacct",
    [
        (0, "", ""),  # accounting that knows no such job: no lines, exit 0
        (1, "", "Slurm accounting storage is disabled\n"),  # hand-written: a cluster without accounting
    ],
)
def test_waiting_ends_when_slurm_no_longer_knows_the_job(tmp_path, monkeypatch, sacct):
    # A job neither squeue nor sacct knows (a cluster without accounting, once it left squeue) is an end.
    # No real SLURM: every command hpcft.slurm.client runs gets recorded (squeue) or fixed (sacct) output.
    import time

    from hpcft.spec import build_spec, dump_spec

    answers = {"squeue": (1, recorded("squeue_unknown.txt"), recorded("squeue_unknown.stderr.txt")), "sacct": sacct}
    calls = []

    def fake_run_process(argv, timeout):
        calls.append(list(argv))
        assert argv[0] in answers, f"unexpected SLURM command in a unit test: {argv}"
        return subprocess.CompletedProcess(list(argv), *answers[argv[0]])

    monkeypatch.setattr(client, "run_process", fake_run_process)
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(dump_spec(build_spec({"launch": {"command": ["t.py"]}})))
    (run / "state.json").write_text(json.dumps({"backend": "sbatch", "jobs": [{"id": "999999"}]}))
    t0 = time.monotonic()
    final = monitor.wait_for(run, interval=0.05, unknown_grace_s=0.3)
    assert final.state == "UNKNOWN" and 0.3 <= time.monotonic() - t0 < 30  # after the grace, not at once
    assert calls[:2] == [
        ["squeue", "-h", "-j", "999999", "-o", "%i|%T|%M|%D|%R"],
        ["sacct", "-X", "-n", "-P", "-j", "999999", "-o", "JobID,State,Elapsed,NNodes,NodeList,ExitCode"],
    ]
    assert len(calls) >= 4 and calls == calls[:2] * (len(calls) // 2)  # polled again until the grace ran out


@pytest.mark.parametrize("scope", ["one run", "the runs directory"])
def test_status_watch_ends_by_the_same_rule_as_waiting(tmp_path, monkeypatch, scope):
    # `hpcft status RUN --watch` on a job neither squeue nor sacct knows ends after the grace, as `--wait` and
    # `logs -f` do; before, it refreshed forever. The grace is shortened here; the interval is --interval's least.
    from hpcft.spec import build_spec, dump_spec
    from tests import fuzzing as F

    answers = {"squeue": (1, recorded("squeue_unknown.txt"), recorded("squeue_unknown.stderr.txt")),
               "sacct": (0, "", "")}  # fmt: skip
    calls = []

    def fake_run_process(argv, timeout):
        assert argv[0] in answers, f"unexpected SLURM command in a unit test: {argv}"
        calls.append(argv[0])
        assert len(calls) <= 20, "--watch still refreshing long after the grace"
        return subprocess.CompletedProcess(list(argv), *answers[argv[0]])

    monkeypatch.setattr(client, "run_process", fake_run_process)
    monkeypatch.setattr(monitor, "UNKNOWN_GRACE_S", 0.3)
    run = tmp_path / "runs" / "sft-20261201-101500"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(dump_spec(build_spec({"launch": {"command": ["t.py"]}})))
    (run / "state.json").write_text(json.dumps({"backend": "sbatch", "jobs": [{"id": "999999"}]}))
    ref = [run.name] if scope == "one run" else []
    out = F.invoke(["status", *ref, "--runs-dir", str(tmp_path / "runs"), "--watch", "--interval", "1"])
    F.assert_clean(out)
    assert out.exit_code == 0 and "UNKNOWN" in out.output, out.output
    # First refresh: UNKNOWN, the grace starts; the next, 1 s later (past the 0.3 s grace): the end.
    assert calls == ["squeue", "sacct"] * 2


def _write_like_rank0(run, records):
    """Appends ``records`` as hpcft.train.metrics does (train_begin also to metrics-events.jsonl with its log end).

    Returns each record with the byte offsets its log line begins and ends at.
    """
    placed, pos = [], 0
    with open(run / "metrics.jsonl", "ab") as log, open(run / "metrics-events.jsonl", "ab") as events:
        for r in records:
            line = (json.dumps(r) + "\n").encode()
            log.write(line)
            placed.append((r, pos, pos + len(line)))
            pos += len(line)
            if "event" in r:
                events.write((json.dumps({**r, "log_end": pos}) + "\n").encode())
    return placed


@pytest.mark.parametrize("tail", [1, 40, 97, 333, 1000, 10**6])
def test_progress_reads_the_events_and_the_logs_tail_only(tmp_path, monkeypatch, tail):
    from hpcft.rundir import store

    monkeypatch.setattr(store, "METRICS_TAIL_BYTES", tail)
    placed = _write_like_rank0(tmp_path, METRICS)
    size = placed[-1][2]
    tail_start = next((b for _, b, _ in placed if b >= size - tail), size)  # the first whole line in the tail
    expected = [r for r, b, _ in placed if "event" in r or b >= tail_start]
    assert store.read_progress(tmp_path) == expected
    if tail == 10**6:
        assert expected == METRICS  # a tail as long as the log: everything


def test_status_of_a_long_run_matches_reading_it_whole(tmp_path):
    from hpcft.rundir import store

    records = [METRICS[0], *[{"step": s, "loss": 9.0 / s, "tokens_per_s": 1.0 * s, "time": 1.0 * s} for s in
               range(1, 30001)]]  # fmt: skip
    records.insert(501, {"step": 500, "eval_loss": 1.5, "time": 500.5})
    for r in records[502:]:
        r["last_eval_loss"] = 1.5  # as rank 0 writes it after an eval
    records.insert(1000, {"event": "train_begin", "max_steps": 40000, "start_step": 999, "job_id": "7", "restart": 1,
                          "time": 999.5})  # fmt: skip
    _write_like_rank0(tmp_path, records)
    whole, progress = store.read_metrics(tmp_path), store.read_progress(tmp_path)
    assert len(progress) < 1000 < 30000 < len(whole)
    assert monitor.summarize_metrics(progress) == monitor.summarize_metrics(whole)
    assert monitor.summarize_metrics(progress)["eval_loss"] == 1.5
    assert monitor.estimate_eta(progress, 40000) == monitor.estimate_eta(whole, 40000) == pytest.approx(10000.0)
    state = {"jobs": [{"id": "7"}]}
    assert monitor.count_restarts(state, progress) == monitor.count_restarts(state, whole) == 1


def test_progress_of_a_run_without_events_file_reads_the_log(tmp_path):
    from hpcft.rundir import store

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    assert store.read_progress(tmp_path) == METRICS


def test_plot_draws_the_timeline_above_the_curves(tmp_path):
    image = import_or_require("matplotlib.image")
    spans = [("queue", 0, 60), ("startup", 60, 75), ("productive", 75, 300), ("checkpoint", 300, 310),
             ("redone", 310, 330), ("restart", 330, 345), ("productive", 345, 600)]  # fmt: skip
    out = plot.write_plot(plot.extract_series(METRICS), tmp_path / "t.png", "run", spans=spans)
    pixels = image.imread(out)
    assert pixels.shape == (750, 900, 4)  # 9 x 7.5 inches at 100 dpi: the timeline above the loss and speed
    top = (pixels[:140, :, :3] * 255).round().astype(int).reshape(-1, 3).tolist()

    def drawn(colour: str) -> bool:
        rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        return any(max(abs(a - b) for a, b in zip(p, rgb, strict=True)) <= 2 for p in top)

    assert all(drawn(plot.COLOURS[k]) for k in ("queue", "productive", "redone", "restart"))
