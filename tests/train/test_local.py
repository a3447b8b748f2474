"""Train tier on this machine: the local backend, the demo model, the data pipeline."""

from __future__ import annotations

import json

import pytest

from tests.conftest import hpcft

pytestmark = pytest.mark.train


def test_local_backend_trains_and_checkpoints(demo_dir, runs_dir):
    hpcft("submit", str(demo_dir / "job.yaml"), "--backend", "local", "--wait", "--runs-dir", str(runs_dir))
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    st = json.loads(hpcft("status", run.name, "--runs-dir", str(runs_dir), "--json").stdout)
    assert st["state"] == "COMPLETED" and st["finished"]
    assert st["step"] == 20 and st["checkpoint"] == "checkpoint-20"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns
    assert any("eval_loss" in r for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r and r["step"] > 1)
    # The final model loads through the same path a user's model takes.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "llama"

    # `resume --checkpoint 10` pins that checkpoint only until a newer one is committed: a later requeue
    # must not go back to 10 again (nor die once rotation has deleted it).
    hpcft("resume", str(run), "--checkpoint", "10", "-o", "train.max_steps=30", "--wait", timeout=900)
    begins = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "train_begin" in x]
    assert begins[-1]["start_step"] == 10 and not (run / "RESUME_FROM").exists()

    # The events file holds exactly the log's train_begin lines, each with the offset its line ends at in the log;
    # step records after an eval carry it (status reads only the log's tail).
    log = (run / "metrics.jsonl").read_bytes()
    ends, pos, last_eval = {}, 0, None
    for line in log.splitlines(keepends=True):
        pos += len(line)
        record = json.loads(line)
        if "train_begin" in record.values():
            ends[pos] = record
        if "loss" in record and len(ends) == 1:  # the first job (the resume went back to step 10's eval)
            assert record.get("last_eval_loss") == last_eval, record
        last_eval = record.get("eval_loss", last_eval)
    events = [json.loads(x) for x in (run / "metrics-events.jsonl").read_text().splitlines()]
    assert len(events) == len(ends) == 2 and all(ends[e.pop("log_end")] == e for e in events)


def test_completion_only_labels_on_a_concrete_sample(demo_dir):
    from transformers import AutoTokenizer

    from hpcft.train.data import IGNORE_INDEX, split_sample, tokenize_sample

    tok = AutoTokenizer.from_pretrained(demo_dir / "model")
    prompt, completion = split_sample(
        {"instruction": "Reverse the word.", "input": "apple", "output": "elppa"}, "alpaca", "row 1"
    )
    assert prompt == "### Instruction:\nReverse the word.\n\n### Input:\napple\n\n### Response:\n"
    s = tokenize_sample(tok, prompt, completion, seq_len=512)
    n_prompt = 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert s["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert s["labels"][n_prompt:] == s["input_ids"][n_prompt:]
    assert tok.decode(s["input_ids"][n_prompt:]) == "elppa</s>"
    short = tokenize_sample(tok, prompt, completion, seq_len=8)
    assert len(short["input_ids"]) == len(short["labels"]) == 8
