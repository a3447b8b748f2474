"""P3: checkpoint save bytes/s ÷ a plain sequential write of the same bytes on the same filesystem (goal ≥ 0.8).

The hpcft save path is measured whole: the HF Trainer writes checkpoint-N (model safetensors,
optimizer, scheduler, RNG, trainer state) into the staging directory, then hpcft's commit (manifest
of every file and size, fsynced marker, atomic rename, directory fsync). The baseline writes the same
number of bytes to one file with plain ``write`` calls on the same filesystem. Model: the 8.3 M demo
Llama (hidden 512), after one optimizer step so Adam's state exists.

    .venv/bin/python benchmarks/bench_checkpoint.py [--runs 5] [--dir DIR]

Prints one JSON line and one markdown table row (medians over the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

os.environ.setdefault("OMP_NUM_THREADS", "1")


def plain_write(path: Path, nbytes: int, chunk: int = 8 << 20) -> float:
    """Seconds to write ``nbytes`` sequentially to a new file (no fsync, like torch.save)."""
    block = memoryview(os.urandom(chunk))  # slices of a memoryview copy nothing
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left > 0:
            left -= f.write(block[: min(chunk, left)])
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def make_trainer(tmp: Path):
    from transformers import Trainer, TrainingArguments

    from hpcft.spec import build_spec
    from hpcft.train import checkpoint, data, model
    from hpcft.train.demo import build_demo

    job = build_demo(tmp / "demo", hidden_size=512)
    run = tmp / "run"
    run.mkdir()
    (run / "state.json").write_text('{"backend": "local", "jobs": []}')
    data_file = str(job.parent / "data" / "train.jsonl")
    spec = build_spec({"train": {"model": str(tmp / "demo/model"), "data": {"train": data_file}, "seq_len": 64}})
    tok = model.load_tokenizer(spec)
    train_ds, _ = data.build_datasets(spec, run, tok)
    args = TrainingArguments(output_dir=checkpoint.output_dir(spec, run), max_steps=1, per_device_train_batch_size=2,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=model.load_model(spec), args=args, train_dataset=train_ds, processing_class=tok,
                      data_collator=data.make_collator(tok, False))  # fmt: skip
    trainer.train()
    return trainer, spec, run


def measure() -> tuple[str, str]:
    """The JSON line and the markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="filesystem to measure on (default: a temp dir)")
    opts = parser.parse_args()

    import transformers
    from transformers import TrainerControl

    from hpcft.rundir import checkpoints
    from hpcft.train import checkpoint

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    saves, plains, sizes = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=opts.dir) as tmp:
        trainer, spec, run = make_trainer(Path(tmp))
        commit = checkpoint.make_commit_callback(spec, run, world_size=1)
        final = checkpoint.checkpoints_dir(spec, run)
        for i in range(opts.runs):
            trainer.state.global_step = 100 + i
            t0 = time.perf_counter()
            trainer._save_checkpoint(trainer.model, None)
            commit.on_save(trainer.args, trainer.state, TrainerControl())
            saves.append(time.perf_counter() - t0)
            path = final / f"{checkpoints.PREFIX}{100 + i}"
            assert checkpoints.problem(path) is None
            sizes.append(sum(checkpoints.list_files(path).values()))
            plains.append(plain_write(Path(tmp) / "plain.bin", sizes[-1]))
    nbytes = statistics.median(sizes)
    save_bps, plain_bps = nbytes / statistics.median(saves), nbytes / statistics.median(plains)
    ratio = save_bps / plain_bps
    result = {"bench": "P3 checkpoint save", "ratio": round(ratio, 3), "goal": ">= 0.8", "bytes": int(nbytes),
              "save_mb_s": round(save_bps / 1e6, 1), "plain_mb_s": round(plain_bps / 1e6, 1), "runs": opts.runs,
              "save_s": [round(s, 4) for s in saves], "plain_s": [round(s, 4) for s in plains]}  # fmt: skip
    row = (
        f"| P3 checkpoint save | {ratio:.2f} (≥ 0.8) | {nbytes / 1e6:.1f} MB: hpcft save + commit "
        f"{save_bps / 1e6:.0f} MB/s ÷ plain write {plain_bps / 1e6:.0f} MB/s; median of {opts.runs} |"
    )
    return json.dumps(result), row


if __name__ == "__main__":
    report(measure)
