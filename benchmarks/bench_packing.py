"""P2: useful (non-pad) tokens/s of the HF Trainer with sequence packing ÷ without (goal ≥ 2).

The demo Llama model (``hpcft.train.demo.build_demo``) trains one epoch on the same skewed-length
alpaca dataset (most samples short, a few long) with the same batch size, once with
``train.packing`` and once without, through ``hpcft.train.data`` (dataset + collator). Useful
tokens are the Trainer's non-padding count; both runs see the same samples once.

    .venv/bin/python benchmarks/bench_packing.py [--runs 5] [--samples 960] [--batch-size 8]

Prints one JSON line and one markdown table row: the ratio of the median wall-clock rates, and the
ratio per CPU-second of the process (steadier on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: a 2-core machine shared with others

SEQ_LEN = 512
BATCH = 8  # TrainingArguments.per_device_train_batch_size default


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows: 90% with 5-30 word outputs, 10% with 150-300 word outputs."""
    from hpcft.train.demo import WORDS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.randint(150, 300) if rng.random() < 0.1 else rng.randint(5, 30)
        rows.append({"instruction": "Repeat the words.", "input": "", "output": " ".join(rng.choices(WORDS, k=words))})
    return rows


def train_once(model_dir: Path, ds, collator, tokenizer, out: str, batch: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, non-pad tokens seen) of one epoch on ``ds``."""
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        logging_strategy="no",
        include_num_input_tokens_seen="non_padding",
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # it prints a summary dict: keep stdout to our two lines
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - t0, time.process_time() - c0, int(trainer.state.num_input_tokens_seen)


def run_pairs(
    model_dir: Path, sets: dict, tokenizer, runs: int, out: str, batch: int
) -> dict[bool, list[tuple[float, float]]]:
    """Per packing setting, (wall, CPU) useful tokens/s of each run; the two settings alternate."""
    from hpcft.train import data

    rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    tokens = {}
    for _ in range(runs):
        for packing in (False, True):
            collator = data.make_collator(tokenizer, packing)
            secs, cpu, tokens[packing] = train_once(model_dir, sets[packing], collator, tokenizer, out, batch)
            rates[packing].append((tokens[packing] / secs, tokens[packing] / cpu))
    assert tokens[False] == tokens[True], tokens  # both settings saw the same real tokens
    return rates


def measure() -> tuple[str, str]:
    """The JSON line and the markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=960)
    parser.add_argument("--batch-size", type=int, default=BATCH, help="per-device batch (rows), both settings")
    opts = parser.parse_args()

    import datasets
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hpcft.train import data
    from hpcft.train.demo import build_demo

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        build_demo(Path(tmp) / "demo", hidden_size=256)
        model_dir = Path(tmp) / "demo" / "model"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        path = Path(tmp) / "skewed.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(opts.samples)))
        sets = {p: data.load_dataset(path, "alpaca", tokenizer, SEQ_LEN, packing=p) for p in (False, True)}
        rates = run_pairs(model_dir, sets, tokenizer, opts.runs, str(Path(tmp) / "out"), opts.batch_size)
    lengths = [len(x) for x in sets[False]["input_ids"]]
    (unpacked, unpacked_cpu), (packed, packed_cpu) = (
        [statistics.median(r[k] for r in rates[p]) for k in (0, 1)] for p in (False, True)
    )
    result = {
        "bench": "P2 packing",
        "goal": ">= 2",
        "ratio": round(packed / unpacked, 2),
        "cpu_time_ratio": round(packed_cpu / unpacked_cpu, 2),
        "useful_tok_s_packed": round(packed),
        "useful_tok_s_unpacked": round(unpacked),
        "runs": opts.runs,
        "samples": len(lengths),
        "rows_packed": len(sets[True]),
        "seq_len": SEQ_LEN,
        "batch_size": opts.batch_size,
        "median_len": statistics.median(lengths),
        "max_len": max(lengths),
        "all_ratios": [round(p[0] / u[0], 2) for p, u in zip(rates[True], rates[False], strict=True)],
    }
    row = (
        f"| P2 packing | {result['ratio']}× (≥ 2) | useful tok/s packed {packed:.0f} ÷ unpacked {unpacked:.0f} "
        f"(per CPU-second {result['cpu_time_ratio']}×); {len(lengths)} samples (median {result['median_len']}, "
        f"max {max(lengths)} tokens) → {len(sets[True])} rows of ≤ {SEQ_LEN}; batch {opts.batch_size}; "
        f"median of {opts.runs} |"
    )
    return json.dumps(result), row


if __name__ == "__main__":
    report(measure)
