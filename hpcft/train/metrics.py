"""Rank 0's record of training: ``RUN/metrics.jsonl`` (train_begin, step/loss/lr/tokens/s, eval).

One JSON object per line, appended; ``hpcft status`` and ``hpcft plot`` read it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from hpcft import runs


def make_metrics_callback(run: Path):
    """A TrainerCallback appending step, loss, tokens/s and elapsed time to metrics.jsonl (rank 0)."""
    from transformers import TrainerCallback

    path = run / runs.METRICS_FILE

    def append(record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    class MetricsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = self.t_last = time.time()
            self.tokens_last = state.num_input_tokens_seen
            if state.is_world_process_zero:
                append(
                    {
                        "event": "train_begin",
                        "max_steps": state.max_steps,
                        "start_step": state.global_step,
                        "world_size": args.world_size,
                        "job_id": os.environ.get("HPCFT_JOB_ID", "local"),
                        "restart": int(os.environ.get("HPCFT_RESTART_COUNT", "0")),
                        "time": time.time(),
                    }
                )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            now = time.time()
            record = {"step": state.global_step, "time": now, "elapsed": round(now - self.t0, 3)}
            if "loss" in logs:
                tokens = state.num_input_tokens_seen
                dt = now - self.t_last
                record.update(
                    loss=logs["loss"],
                    lr=logs.get("learning_rate"),
                    tokens_per_s=round((tokens - self.tokens_last) / dt, 1) if dt > 0 else None,
                )
                self.t_last, self.tokens_last = now, tokens
            elif "eval_loss" in logs:
                loss = logs["eval_loss"]
                record.update(eval_loss=loss, perplexity=math.exp(loss) if loss < 700 else None)  # exp overflows
            else:
                return
            append(record)

    return MetricsCallback()
