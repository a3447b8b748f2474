"""Entry of every rank: ``python -m hpcft.train.main RUN``; reads ``RUN/spec.yaml`` only.

Lifecycle: setup (logging, seed) → data → model → resume (newest checkpoint) → train → save → finish.
Rank 0 logs to the console (the job output) and appends ``RUN/metrics.jsonl``; every rank
logs to ``RUN/logs/rank-<N>.log``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from hpcft import runs

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


def train(run: Path) -> None:
    """Run the recipe of ``RUN/spec.yaml`` to the end."""
    from transformers import Trainer

    from hpcft.train import checkpoint, data, model
    from hpcft.train.args import training_arguments
    from hpcft.train.metrics import make_metrics_callback

    spec = runs.load_run_spec(run)
    args = training_arguments(spec, checkpoint.output_dir(spec, run))
    tokenizer = model.load_tokenizer(spec)
    train_ds, eval_ds = data.build_datasets(spec, run, tokenizer)
    trainer = Trainer(
        model=model.load_model(spec),
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=data.make_collator(tokenizer, spec.train.packing),
        callbacks=[make_metrics_callback(run)],
    )
    trainer.train(resume_from_checkpoint=checkpoint.resume_point(spec, run))
    checkpoint.finish(trainer, run)


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
