"""Entry of every rank: ``python -m hpcft.train.main RUN``; reads ``RUN/spec.yaml`` only.

Lifecycle: setup (logging, seed) → data → model → resume (newest checkpoint) → train → save → finish.
Rank 0 logs to the console (the job output) and appends ``RUN/metrics.jsonl``; every rank
logs to ``RUN/logs/rank-<N>.log``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.rundir import checkpoints, layout, lifecycle, store
from hpcft.slurm.env import node_name
from hpcft.train.preemption import exit_if_saved_for_requeue

log = logging.getLogger("hpcft.train")


def rank() -> int:
    """Global rank of this process (0 outside a distributed launch)."""
    return int(os.environ.get("RANK", "0"))


class EveryLinePrefixed(logging.Formatter):
    """A record's every line starts ``<time> rank<N>``: the ranks of a node share one file (a traceback too)."""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        head = f"{self.formatTime(record)} rank{rank()} |"
        return "\n".join([first, *(f"{head} {line}" for line in rest)])


def setup_logging(run: Path) -> None:
    """The ranks of a node append to that node's log file (``layout.node_log``); rank 0 also to the console."""
    import transformers

    logs = run / layout.LOGS_DIR
    logs.mkdir(exist_ok=True)
    handler = logging.FileHandler(logs / layout.node_log(node_name(os.environ)))  # appends (O_APPEND)
    handler.setFormatter(EveryLinePrefixed(f"%(asctime)s rank{rank()} %(name)s %(levelname)s %(message)s"))
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
        "rank %d of %s on %s: job %s restart %s pid %d",
        rank(),
        os.environ.get("WORLD_SIZE", "1"),
        node_name(os.environ),
        job,
        os.environ.get("HPCFT_RESTART_COUNT", "0"),
        os.getpid(),
    )


def train(run: Path) -> None:
    """Run the recipe of ``RUN/spec.yaml`` to the end."""
    from transformers import Trainer

    from hpcft.train import checkpoint, data, heartbeat, model, preemption, startup, tracking
    from hpcft.train.args import deepspeed_setup, training_arguments
    from hpcft.train.ds_lazy import keep_deepspeed_lazy
    from hpcft.train.metrics import make_metrics_callback

    startup.imports_done()
    spec = for_world(checkpoint.with_save_steps(store.load_run_spec(run), run), os.environ)
    keep_deepspeed_lazy()  # a rank without --zero never imports deepspeed
    if spec.train.uses_deepspeed:
        from hpcft.train.ds_ops import use_prebuilt_ops

        use_prebuilt_ops()  # the cache's ops load as built, with no JIT step (hpcft.train.ds_ops)
    tracking.setup_env(spec, run)  # before the Trainer: its tracker integrations read the variables
    ds_config = deepspeed_setup(spec, run)  # before TrainingArguments: CPU gloo init, NVMe checks
    args = training_arguments(spec, checkpoint.output_dir(spec, run), ds_config)
    startup.mark("process_group")
    resume = checkpoint.resume_point(spec, run, args.world_size, args.process_index == 0)
    args = checkpoint.universal_if_resized(spec, resume, args, ds_config)  # ZeRO shards of another world size
    if checkpoint.reached_max_steps(spec, resume):
        checkpoint.finish_from(run, resume, args.process_index == 0)  # a run resumed at its end: no step more
        return
    tokenizer = model.load_tokenizer(spec)
    train_ds, eval_ds = data.build_datasets(spec, run, tokenizer)
    collator = data.make_collator(tokenizer, spec.train.packing)
    startup.mark("data")
    trainer = Trainer(
        model=model.load_model(spec, args),  # after args: with ZeRO-3 they turn on zero.Init
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[c for c in (make_metrics_callback(run, collator), tracking.make_tracker_callback(spec, run)) if c],
    )
    startup.mark("model")
    world = trainer.args.world_size
    log.info("distributed: %s over %d ranks (deepspeed %s, fsdp %s)", trainer.accelerator.distributed_type,
             world, trainer.is_deepspeed_enabled, trainer.is_fsdp_enabled)  # fmt: skip
    check_not_dropped(trainer)
    preempt = preemption.make_preemption_callback(run)
    # preempt decides, commit follows; the heartbeat last: it sees whether this step saves or evaluates
    commit, beats = checkpoint.make_commit_callback(spec, run, world), heartbeat.make_heartbeat_callback(trainer)
    for callback in (checkpoint.make_intervals_callback(), preempt, commit, beats):
        trainer.add_callback(callback)
    if resume:
        from hpcft.train.ds_nvme_resume import patch_if_nvme

        patch_if_nvme(trainer)  # DeepSpeed's NVMe-offload load is inexact without it (see that module)
    trainer.train(resume_from_checkpoint=resume)
    log.info("peak host memory of this rank: %d MiB (VmHWM)", peak_rss_bytes() // 2**20)
    _log_gpu_memory()
    if preempt.preempted:
        if trainer.is_world_process_zero():
            preemption.mark_requeue(run, trainer.state.global_step)
        return
    checkpoint.finish(trainer, spec, run)


def _log_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        log.info("peak GPU memory of this rank: %d MiB allocated", torch.cuda.max_memory_allocated() // 2**20)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM`` of /proc/self/status; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def this_world(run: Path, env: Mapping[str, str]) -> tuple[int, int]:
    """(this world's ranks, spec.yaml's): fewer where a node was lost (``JobSpec.survivor_nodes``)."""
    return int(env.get("WORLD_SIZE", "1")), store.load_run_spec(run).ranks


def for_world(spec, env: Mapping[str, str]):
    """The spec for this rank's world (``WORLD_SIZE`` in ``env``) where it is smaller than spec.yaml's: the ranks
    left after a node loss (``--nnodes=LOW:N``, ``JobSpec.survivor_nodes``) accumulate more, so each step takes
    the same samples as before; rank 0 says so."""
    import dataclasses

    from hpcft.spec.model import rebatch

    world, is_rank0 = int(env.get("WORLD_SIZE", "1")), env.get("RANK", "0") == "0"
    planned, batch = spec.ranks, spec.global_batch
    if world >= planned or spec.train.uses_deepspeed:
        return spec
    if batch % world:  # survivor_nodes allows no such world: a job started by hand with fewer ranks
        raise HpcftError(f"{world} ranks cannot share spec.yaml's global batch of {batch} ({planned} ranks)",
                         hint="start the job with resources.nodes × gpus_per_node ranks")  # fmt: skip
    new, changed = rebatch(spec.train, batch, world)
    if is_rank0:
        print(f"hpcft: training on {world} of {planned} ranks (a node lost): {', '.join(changed)} keeps the global "
              f"batch at {batch}", file=sys.stderr, flush=True)  # fmt: skip
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **new))


def check_not_dropped(trainer) -> None:
    """Refuse to train when the accelerate config asked for FSDP but accelerate silently fell back to DDP.

    accelerate enables FSDP only for GPU-like distributed types (accelerate/state.py: the FSDP switch
    is inside the MULTI_GPU/MLU/… branch); on a CPU-only machine (MULTI_CPU) ACCELERATE_USE_FSDP is
    ignored without a word and the job would train unsharded.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        raise HpcftError(
            f"the accelerate config asks for FSDP, but accelerate set up {trainer.accelerator.distributed_type}: "
            "it enables FSDP only on GPUs, so this run would train unsharded",
            hint="run FSDP on GPU nodes; on CPU use DeepSpeed ZeRO-3 for sharding (--zero 3)",
        )


def is_disk_full(error: BaseException, run: Path) -> bool:
    """True if ``error`` comes from a full filesystem under ``run``.

    torch.save and safetensors wrap ENOSPC in their own exceptions without the errno
    (RuntimeError "basic_ios::clear: iostream error" or "… file write failed"; SafetensorError
    "os error 28"), so besides ENOSPC and its message, any failure while the run's filesystem has
    almost no room left counts.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return shutil.disk_usage(run).free < 16 * 2**20


def discard_staging(run: Path) -> None:
    """Remove the staging directory of an interrupted save."""
    spec = store.load_run_spec(run)
    shutil.rmtree(checkpoints.checkpoints_dir(spec, run) / checkpoints.STAGING, ignore_errors=True)


def disk_full_message(run: Path) -> str:
    """What a user needs when a save hits a full filesystem: where, what survived, what to do."""
    spec = store.load_run_spec(run)
    base = checkpoints.checkpoints_dir(spec, run)
    info = checkpoints.newest_complete(base, warn=False)
    kept = f"the newest complete checkpoint is intact: {info.path}" if info else "no complete checkpoint exists yet"
    return (f"no space left on the filesystem of {base}; the interrupted save "
            f"is discarded, {kept}. HINT: free space, lower train.save_total_limit, or set train.output to a "
            "larger shared filesystem, then `hpcft resume RUN`")  # fmt: skip


def parse_args(argv: list[str]) -> Path:
    """The run directory; ``--local_rank`` (added by the deepspeed launcher) is accepted and ignored."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hpcft.train.main")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv).run_dir.resolve()


def main(argv: list[str]) -> None:
    """A cold rank (``python -m hpcft.train.main RUN``): train, then leave through ``dist.exit_cleanly`` (the
    gloo exit-abort workaround)."""
    from hpcft.train import startup
    from hpcft.train.dist import exit_cleanly

    startup.imports_begin()  # the stack is imported in ``train``, which ends it (imports_done)
    exit_cleanly(run_rank(argv))


def run_rank(argv: list[str]) -> int:
    """One rank's whole life up to its exit status; torch.distributed is left for the caller to end."""
    from hpcft.slurm.env import torch_rank_env
    from hpcft.train.ds_ops import use_job_toolchain

    os.environ.update(torch_rank_env(os.environ))  # ranks started by mpirun (deepspeed-openmpi/mvapich)
    use_job_toolchain()  # DeepSpeed's ops load with the ninja that built them
    # `python -m` puts the working directory (the run directory, on the shared filesystem) first on sys.path;
    # every importlib.metadata lookup would then stat and list it: accelerate's package checks run during
    # training, on every rank. Nothing is imported from there.
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    run = parse_args(argv)
    fatal = lifecycle.fatal_reason(run)
    if fatal is not None:  # restarted in the job after an error a rerun repeats: stop at once
        print(f"hpcft: not training again: {fatal}", file=sys.stderr, flush=True)
        return 3
    exit_if_saved_for_requeue(run)
    setup_logging(run)
    if rank() == 0 and os.environ.get("HPCFT_JOB_ID", "local") != "local":
        world = this_world(run, os.environ)
        restarted = store.record_rank_start(run, os.environ["HPCFT_JOB_ID"], world)
        if restarted and "ranks" in restarted:
            log.warning("in-job restart: %s", restarted["reason"])
        elif restarted:
            failures = store.read_state(run).get("failures")
            log.warning("in-job restart after a crash (failure %s of run.max_failures)", failures)
    try:
        train(run)
    except BaseException as e:
        if is_disk_full(e, run):
            if rank() == 0:
                discard_staging(run)  # the half-written save is useless; its room lets the message be written
            log.error("%s", disk_full_message(run))
            print(f"hpcft: {disk_full_message(run)}", file=sys.stderr, flush=True)
        else:
            log.exception("training failed on rank %d", rank())
            if isinstance(e, HpcftError) and rank() == 0:  # a configuration problem: a requeue cannot fix it
                lifecycle.mark_fatal(run, f"configuration error: {e.message}")
        return 1
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
