"""P7: time of a second preprocessing of the same data (cache hit) ÷ the first (miss), goal ≤ 0.05.

``hpcft.train.data.cached_dataset`` on a few thousand alpaca samples (the cheapest format to
tokenize, so the least favourable ratio) with the demo tokenizer: the first call reads, tokenizes,
packs and saves to a fresh cache directory; the second hashes the file and loads the saved entry.

    .venv/bin/python benchmarks/bench_cache.py [--runs 5] [--samples 4000]

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


def measure() -> tuple[str, str]:
    """The JSON line and the markdown row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4000)
    opts = parser.parse_args()

    import datasets
    from transformers import AutoTokenizer

    from hpcft.train import data
    from hpcft.train.demo import build_demo, make_samples

    datasets.disable_progress_bars()
    misses, hits = [], []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        build_demo(Path(tmp) / "demo")
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "demo" / "model")
        path = Path(tmp) / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make_samples(opts.samples, seed=3)))
        options = data.DataOptions("alpaca", seq_len=512, completion_only=True, packing=True)
        for run in range(opts.runs):
            cache = Path(tmp) / f"cache-{run}"
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                ds = data.cached_dataset(path, tokenizer, options, cache)
                times.append(time.perf_counter() - t0)
            assert len(list(cache.iterdir())) == 1 and len(ds) > 0
            misses.append(times[0])
            hits.append(times[1])
    miss, hit = statistics.median(misses), statistics.median(hits)
    result = {
        "bench": "P7 data cache",
        "goal": "<= 0.05",
        "ratio": round(hit / miss, 4),
        "hit_s": round(hit, 4),
        "miss_s": round(miss, 3),
        "runs": opts.runs,
        "samples": opts.samples,
        "rows": len(ds),
        "all_ratios": [round(h / m, 4) for h, m in zip(hits, misses, strict=True)],
    }
    row = (
        f"| P7 data cache | {result['ratio']} (≤ 0.05) | hit {hit * 1000:.0f} ms ÷ miss {miss * 1000:.0f} ms; "
        f"{opts.samples} alpaca samples, packed; median of {opts.runs} |"
    )
    return json.dumps(result), row


if __name__ == "__main__":
    report(measure)
