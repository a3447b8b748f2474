"""Entry of every rank: ``python -m hpcft.train.main RUN``; reads ``RUN/spec.yaml`` only.

Lifecycle: setup (logging, seed) → data → model → resume (newest checkpoint) → train → save → finish.
Rank 0 logs to the console (the job output) and appends ``RUN/metrics.jsonl``; every rank
logs to ``RUN/logs/rank-<N>.log``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path

from hpcft import runs
from hpcft.spec import JobSpec

log = logging.getLogger("hpcft.train")


def rank() -> int:
    """Global rank of this process (0 outside a distributed launch)."""
    return int(os.environ.get("RANK", "0"))


def setup_logging(run: Path) -> None:
    """Every rank appends to its own log file; rank 0 also writes to the console."""
    import transformers

    logs = run / runs.LOGS_DIR
    logs.mkdir(exist_ok=True)
    handler = logging.FileHandler(logs / f"rank-{rank()}.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank()} %(name)s %(levelname)s %(message)s"))
    for name in ("hpcft", "transformers"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    if rank() == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("hpcft").addHandler(console)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.disable_progress_bar()

    def excepthook(kind, value, tb):
        log.error("uncaught exception", exc_info=(kind, value, tb))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = excepthook
    job = os.environ.get("HPCFT_JOB_ID", "local")
    log.info(
        "rank %d of %s on %s: job %s restart %s",
        rank(),
        os.environ.get("WORLD_SIZE", "1"),
        socket.gethostname(),
        job,
        os.environ.get("HPCFT_RESTART_COUNT", "0"),
    )


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


def training_arguments(spec: JobSpec, output_dir: str):
    """HF ``TrainingArguments`` from the spec (CPU: gloo; GPU: the default NCCL)."""
    import torch
    from transformers import TrainingArguments

    t = spec.train
    cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if (t.eval_steps and t.data.eval) else "no",
        eval_steps=t.eval_steps,
        logging_steps=t.logging_steps,
        seed=t.seed,
        use_cpu=cpu,
        ddp_backend="gloo" if cpu else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        log_level="info",
        log_level_replica="warning",
        log_on_each_node=False,
        dataloader_num_workers=0,
    )


def train(run: Path) -> None:
    """Run the recipe of ``RUN/spec.yaml`` to the end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from hpcft.train import data

    spec = runs.load_run_spec(run)
    t = spec.train
    output_dir = t.output or str(run / "checkpoints")
    args = training_arguments(spec, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(t.tokenizer or t.model)
    train_ds, eval_ds = data.build_datasets(spec, run, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(t.model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=data.make_collator(tokenizer, t.packing),
        callbacks=[make_metrics_callback(run)],
    )
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(run / "model"))
    if trainer.is_world_process_zero():
        runs.write_atomic(run / runs.FINISHED_FILE, f"{trainer.state.global_step}\n")
        log.info("finished at step %d", trainer.state.global_step)


def parse_args(argv: list[str]) -> Path:
    """The run directory; ``--local_rank`` (added by the deepspeed launcher) is accepted and ignored."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hpcft.train.main")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv).run_dir.resolve()


def main(argv: list[str]) -> None:
    """Train, then leave through ``dist.exit_cleanly`` (the gloo exit-abort workaround)."""
    from hpcft.slurm.env import torch_rank_env
    from hpcft.train.dist import exit_cleanly

    os.environ.update(torch_rank_env(os.environ))  # ranks started by mpirun (deepspeed-openmpi/mvapich)
    run = parse_args(argv)
    setup_logging(run)
    try:
        train(run)
    except BaseException:
        log.exception("training failed on rank %d", rank())
        exit_cleanly(1)
    exit_cleanly(0)


if __name__ == "__main__":
    main(sys.argv[1:])
