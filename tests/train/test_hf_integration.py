"""hpcft's integration for a user's own transformers.Trainer, through the real import path a rank takes.

Each case runs an unedited plain HF-Trainer script in a fresh Python whose PYTHONPATH holds hpcft's
site directory (what ``hpcft node`` gives a user command's ranks), with the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcft.launchers.base import SITE_DIR

pytestmark = pytest.mark.train

SCRIPT = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from datasets import Dataset

model_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
rows = [tok("reverse the word marble: elbram", truncation=True, max_length=32)["input_ids"]] * 64
data = Dataset.from_dict({"input_ids": rows, "labels": rows})
args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=2, logging_steps=1,
                         save_steps=100000, report_to=[], use_cpu=True, seed=1)
trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=data)
trainer.train()
print("TRAINED", trainer.state.global_step)
"""


@pytest.fixture
def user_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(
        json.dumps({"backend": "sbatch", "jobs": [], "created": "2000-01-01T00:00:00+00:00"})
    )
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    return run


def run_script(run: Path, demo_dir: Path, steps: int, world: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SITE_DIR, "HPCFT_HF_INTEGRATION": "1", "HPCFT_RUN_DIR": str(run),
           "HPCFT_WORLD_SIZE": str(world), "NNODES": "1", "NPROC_PER_NODE": str(world)}  # fmt: skip
    argv = [sys.executable, str(run.parent / "train.py"), str(demo_dir / "model"), str(run / "out"), str(steps)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_plain_trainer_reports_to_the_run_directory(demo_dir, user_run):
    proc = run_script(user_run, demo_dir, steps=5)
    assert proc.returncode == 0, proc.stderr
    recs = records(user_run)
    assert recs[0]["event"] == "train_begin" and recs[0]["max_steps"] == 5
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert all(r["tokens_per_s"] for r in steps[1:])  # token counting turned on for hpcft's report


def test_a_warning_saves_at_the_next_step_and_the_rerun_resumes_there(demo_dir, user_run):
    (user_run / "PREEMPT").write_text("USR1\n")  # what the batch script's trap writes
    proc = run_script(user_run, demo_dir, steps=8)
    assert proc.returncode == 0, proc.stderr
    assert (user_run / "REQUEUE").read_text().split() == ["1", "local.0"]  # after-job will requeue (step, segment)
    # The rest of the script's main() does not run as if training had finished (issue #25, item 5).
    assert "TRAINED" not in proc.stdout and "hpcft: saved step 1 for the requeue" in proc.stdout
    assert (user_run / "out" / "checkpoint-1" / "trainer_state.json").is_file()
    (user_run / "PREEMPT").unlink()
    (user_run / "REQUEUE").unlink()  # what after-job does when it requeues the job
    proc = run_script(user_run, demo_dir, steps=8)  # the requeued job: the script is unchanged
    assert proc.returncode == 0, proc.stderr
    assert "hpcft: resuming from" in proc.stdout and "TRAINED 8" in proc.stdout
    begins = [r for r in records(user_run) if r.get("event") == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, 1]


def test_a_rank_restarted_after_the_save_for_requeue_does_not_train_on(demo_dir, user_run):
    (user_run / "REQUEUE").write_text("1\n")  # this job already saved and is ending for requeue
    proc = run_script(user_run, demo_dir, steps=8)
    assert proc.returncode == 0 and "not training again" in proc.stdout
    assert "TRAINED" not in proc.stdout and not (user_run / "metrics.jsonl").exists()


def test_a_wrong_world_stops_before_the_first_step(demo_dir, user_run):
    proc = run_script(user_run, demo_dir, steps=5, world=4)
    assert proc.returncode != 0
    assert "this Trainer sees a world of 1 process(es), but the job runs 4" in proc.stderr
    assert "configuration error" in (user_run / "FATAL").read_text()
    assert not (user_run / "metrics.jsonl").exists()


def test_switched_off_nothing_is_patched(user_run):
    probe = "import transformers.trainer as t; print(hasattr(t.Trainer, '_hpcft_patched'))"
    for flag, patched in (("0", "False"), ("1", "True")):
        env = {**os.environ, "PYTHONPATH": SITE_DIR, "HPCFT_RUN_DIR": str(user_run), "HPCFT_HF_INTEGRATION": flag}
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        assert proc.stdout.strip() == patched, proc.stderr
