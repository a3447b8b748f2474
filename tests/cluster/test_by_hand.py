"""`sbatch` with generated scripts: write without submitting, sbatch by hand, and every hpcft command knows the job.

Real sbatch, real squeue/sacct on the lab: the job a person submits with `sbatch RUN/job.sbatch` records
itself in state.json when it starts, carries its run directory in `--comment`, honours hand-edited
`#SBATCH` lines, and a FINISHED run started again (by hand or by resume at its last step) trains nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_launchers import losses
from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster
SHORT = ["-o", "train.max_steps=6", "-o", "train.save_steps=3", "-o", "train.eval_steps=null"]


def generate(demo: Path, runs: Path, *args: str) -> tuple[Path, list[str]]:
    out = hpcft("submit", str(demo / "job.yaml"), "--nodes", "2", "--no-submit", "--runs-dir", str(runs), *args).stdout
    (line,) = [x.strip() for x in out.splitlines() if x.strip().startswith("sbatch ")]
    (run,) = [p.parent for p in runs.glob("*/spec.yaml")]
    assert json.loads((run / "state.json").read_text())["jobs"] == []  # written, nothing submitted
    return run, line.split()


def sbatch(argv: list[str]) -> str:
    proc = subprocess.run([*argv[:1], "--parsable", *argv[1:]], capture_output=True, text=True, check=True)
    return proc.stdout.strip().split(";")[0]


def status(run: Path) -> dict:
    return json.loads(hpcft("status", str(run), "--json").stdout)


def ended(run: Path, job: str) -> dict:
    return wait_until(f"job {job} to end", lambda: (s := status(run))["job_id"] == job and s["state"] in (
        "COMPLETED", "FAILED", "CANCELLED") and s, timeout=300, interval=2)  # fmt: skip


def test_generated_script_sbatched_by_hand_is_the_runs_job_and_finished_runs_train_nothing(lab, demo_dir, tmp_path):
    run, argv = generate(demo_dir, tmp_path / "runs", *SHORT)
    assert argv == ["sbatch", str(run / "job.sbatch")]
    job = sbatch(argv)
    st = ended(run, job)
    assert st["state"] == "COMPLETED" and st["step"] == 6 and st["job_ids"] == [job]
    (record,) = json.loads((run / "state.json").read_text())["jobs"]
    assert record["id"] == job and record["nodes"] == "node1,node2" and "started" in record
    assert f"hpcft: job {job}" in hpcft("logs", str(run)).stdout
    before = ((run / "metrics.jsonl").read_text(), (run / "model" / "model.safetensors").stat().st_mtime_ns)

    again = sbatch(argv)  # the finished run, sbatched once more by hand
    st = ended(run, again)
    out = hpcft("logs", str(run)).stdout
    assert st["state"] == "COMPLETED" and st["job_ids"] == [job, again]
    assert "is FINISHED (step 6): nothing to train" in out and "hpcft resume" in out
    after = ((run / "metrics.jsonl").read_text(), (run / "model" / "model.safetensors").stat().st_mtime_ns)
    assert after == before

    # Resumed from its final checkpoint (the FINISHED marker lost, as after a crash right after the save):
    (run / "FINISHED").unlink()
    hpcft("resume", str(run), "--wait", timeout=600)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert max(steps) == 6 and (run / "FINISHED").read_text().strip() == "6"
    assert losses(run) == [json.loads(x)["loss"] for x in before[0].splitlines() if '"loss"' in x]


def test_hand_edited_sbatch_lines_are_honoured_and_said(lab, demo_dir, tmp_path):
    run, argv = generate(demo_dir, tmp_path / "runs", *SHORT)
    script = run / "job.sbatch"
    text = script.read_text()
    planned = yaml.safe_load((run / "spec.yaml").read_text())
    assert "#SBATCH --time=00:30:00" in text and "#SBATCH --nodes=2" in text
    script.write_text(text.replace("#SBATCH --time=00:30:00", "#SBATCH --time=7").replace(
        "#SBATCH --nodes=2", "#SBATCH --nodes=1"))  # fmt: skip
    job = sbatch(argv)
    limit = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert re.search(r"TimeLimit=00:07:00", limit), limit
    st = ended(run, job)
    assert st["state"] == "COMPLETED"
    out = hpcft("logs", str(run)).stdout
    assert "the allocation differs from spec.yaml, the allocation wins: nodes: 1 allocated, spec.yaml says 2" in out
    begin = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x)
    assert begin["world_size"] == 2  # 1 node × 2 processes: the allocation, not the spec's 2 nodes
    # spec.yaml follows the allocation and keeps the global batch (2 nodes × 2 processes planned):
    now = yaml.safe_load((run / "spec.yaml").read_text())
    global_batch = planned["train"]["batch_size"] * planned["train"]["grad_accum"] * 4
    assert now["resources"]["nodes"] == 1
    assert now["train"]["batch_size"] * now["train"]["grad_accum"] * 2 == global_batch
    assert "spec.yaml now says 1 node(s): 4 → 2 ranks" in out and f"global batch at {global_batch}" in out


def test_status_from_squeue_and_cancel_know_a_hand_submitted_job(lab, demo_dir, tmp_path):
    run, argv = generate(
        demo_dir, tmp_path / "elsewhere", "-o", "train.max_steps=100000", "-o", "train.eval_steps=null"
    )
    job = sbatch(argv)
    try:
        wait_until("RUNNING", lambda: status(run)["state"] == "RUNNING", timeout=120, interval=2)
        listed = json.loads(hpcft("status", "--from-squeue", "--json").stdout)
        assert [r["job_id"] for r in listed if r["path"] == str(run)] == [job]
        busy = hpcft("resume", str(run), check=False)  # a second job on a live run would overwrite its checkpoints
        assert busy.returncode == 1 and f"job {job} of {run.name} is still queued or running" in busy.stderr
        hpcft("cancel", str(run))
        assert ended(run, job)["state"] == "CANCELLED"
    finally:
        subprocess.run(["scancel", job], check=False)  # never leave a 100000-step job holding the lab
