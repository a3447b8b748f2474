"""A save slower than the warning's initial lead, under a real time limit (#25 item 3).

The batch script's ``--signal=B:USR1@30`` is fixed when it is written (``run.signal_lead=30``, what a
user who measured fast saves once would set). The user's own HF Trainer then saves slowly (a callback
stands in for a big model on a busy filesystem: 35 s a save). 30 s of warning cannot hold such a save;
hpcft's timer measures the first save and asks for the checkpoint at the end minus min(3 × 35 + 30, half
the 4-minute limit) = 120 s, so the save at the warning ends well before the limit and the job requeues.
SLURM's own signal could come at the earliest 90 s before the end (30 s + its 60 s timer): the timer's
warning at 120 s is hpcft's, never SLURM's.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest

from tests.conftest import hpcft, wait_until

pytestmark = pytest.mark.cluster

SLOW_SAVE_S = 35
LIMIT_S = 4 * 60

SCRIPT = """
import sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
from datasets import Dataset

model_dir, out, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])


class SlowFilesystem(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        time.sleep(slow)


tok = AutoTokenizer.from_pretrained(model_dir)
rows = [tok("reverse the word marble: elbram", truncation=True, max_length=32)["input_ids"]] * 64
data = Dataset.from_dict({"input_ids": rows, "labels": rows})
args = TrainingArguments(output_dir=out, max_steps=100000, per_device_train_batch_size=2, logging_steps=1,
                         save_steps=10, report_to=[], use_cpu=True, seed=1)
model = AutoModelForCausalLM.from_pretrained(model_dir)
Trainer(model=model, args=args, train_dataset=data, callbacks=[SlowFilesystem()]).train()
"""


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def test_a_save_slower_than_the_initial_lead_is_warned_in_time(lab, demo_dir, runs_dir, tmp_path):
    script = tmp_path / "slow_save.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "1", "--gpus-per-node", "1", "--time", "4",
                "-o", "run.signal_lead=30", "--runs-dir", str(runs_dir), "--",
                str(script), str(demo_dir / "model"), "{output_dir}", str(SLOW_SAVE_S)).stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    assert "#SBATCH --signal=B:USR1@30\n" in (run / "job.sbatch").read_text()  # the lead fixed in the script
    try:
        event = wait_until(
            "the time-limit event",
            lambda: next((e for e in _state(run).get("events", []) if e.get("kind") == "time limit"), None),
            timeout=LIMIT_S + 60,
        )
        output = hpcft("logs", str(run)).stdout
    finally:
        hpcft("cancel", str(run), check=False)  # the requeued segment would only repeat this one
    measured = float(re.search(r"hpcft: warning (\d+) s before the time limit \(the last save took ([\d.]+) s\)",
                               output).group(2))  # fmt: skip
    assert measured >= SLOW_SAVE_S  # the user's Trainer's save, timed by hpcft
    lead = min(math.ceil(3 * measured + 30), LIMIT_S // 2)
    assert f"hpcft: warning {lead} s before the time limit" in output and lead > 30 + 60  # before SLURM's could
    # SLURM's USR1 never had to ask: it comes up to 60 s before its lead (here as early as 90 s before the end),
    # and one that comes during the timer's save leaves the request alone
    assert "hpcft: warning signal: asking" not in output
    assert (event["action"], event["rc"], event["job"]) == ("requeue", 0, job), event
    assert event["reason"] == "checkpointed after hpcft's warning before the time limit"
    saved = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
    state = json.loads((run / "checkpoints" / f"checkpoint-{saved}" / "trainer_state.json").read_text())
    assert state["global_step"] == saved  # the save at the warning is complete
    assert _state(run).get("failures", 0) == 0
