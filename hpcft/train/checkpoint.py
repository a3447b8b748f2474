"""Checkpoints of a training run: staging, commit after every save, resume point, the run's end.

The Trainer writes ``checkpoint-N`` into ``CHECKPOINTS/.staging``; ``CommitCallback`` waits for
every rank (barrier) and has rank 0 commit it (``hpcft.rundir.checkpoints.commit``: manifest, marker last,
atomic rename, rotation). A requeued or resumed job continues from the newest *complete* checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.plan import save_interval
from hpcft.rundir import checkpoints, lifecycle, publish, store
from hpcft.rundir.checkpoints import checkpoints_dir
from hpcft.rundir.layout import MODEL_DIR, MODEL_STAGING
from hpcft.spec import JobSpec, offload_devices

log = logging.getLogger("hpcft.train")


def output_dir(spec: JobSpec, run: Path) -> str:
    """The Trainer's output directory: the staging area inside the checkpoints directory."""
    return str(checkpoints_dir(spec, run) / checkpoints.STAGING)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank0(trainer_state) -> bool:
    return bool(trainer_state.is_world_process_zero)


def make_commit_callback(spec: JobSpec, run: Path, world_size: int):
    """A TrainerCallback committing each save and recording how long saves take."""
    from transformers import TrainerCallback

    final = checkpoints_dir(spec, run)
    staging = final / checkpoints.STAGING

    class CommitCallback(TrainerCallback):
        t_save = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                self.t_save = time.time()

        def on_save(self, args, state, control, **kwargs):
            _barrier()  # every rank has written its shards into the staging directory
            if _rank0(state):
                path = checkpoints.commit(staging / f"{checkpoints.PREFIX}{state.global_step}", final,
                                          step=state.global_step, world_size=world_size,
                                          zero_stage=spec.train.zero)  # fmt: skip
                lifecycle.pin_spent(run)  # a pinned resume point is spent once newer exists
                removed = checkpoints.rotate(final, spec.train.save_total_limit)
                seconds = round(time.time() - self.t_save, 2) if self.t_save else None
                record_save(run, state.global_step, seconds)
                log.info("committed %s in %ss%s", path.name, seconds,
                         f", removed {', '.join(p.name for p in removed)}" if removed else "")  # fmt: skip
            _barrier()

    return CommitCallback()


def make_save_timer_callback(run: Path):
    """A TrainerCallback for a user's own HF Trainer: how long each of its saves took, into state.json
    (``last_save_seconds``), which sizes hpcft's warning before the time limit (``node/warn_timer.py``)."""
    from transformers import TrainerCallback

    class SaveTimerCallback(TrainerCallback):
        t_save = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                self.t_save = time.time()

        def on_save(self, args, state, control, **kwargs):
            if _rank0(state) and self.t_save:
                seconds = round(time.time() - self.t_save, 2)
                record_save(run, state.global_step, seconds)
                log.info("saved checkpoint-%s in %ss", state.global_step, seconds)
            self.t_save = 0.0

    return SaveTimerCallback()


def record_save(run: Path, step: int, seconds: float | None) -> None:
    """Rank 0: the save's duration into state.json (it sizes the warning) and metrics.jsonl (goodput)."""
    from hpcft.train.metrics import append_record

    store.update_state(run, lambda s: s.update(last_save_seconds=seconds))
    if seconds is not None:
        append_record(run, {"event": "save", "step": step, "time": time.time(), "seconds": seconds})


def resume_point(spec: JobSpec, run: Path, world_size: int, is_rank0: bool) -> str | None:
    """The checkpoint to continue from (None: fresh start); same answer on every rank.

    ``RUN/RESUME_FROM`` (from ``hpcft resume --checkpoint N``) names one explicitly; otherwise
    the newest complete checkpoint, skipping damaged ones with a warning.
    """
    final = checkpoints_dir(spec, run)
    if is_rank0:
        shutil.rmtree(final / checkpoints.STAGING, ignore_errors=True)  # a save interrupted earlier
    _barrier()
    chosen = lifecycle.pinned_resume(run)
    if chosen:
        why = checkpoints.problem(final / chosen)
        if why:
            raise HpcftError(f"cannot resume from {final / chosen}: {why}", hint="pick another --checkpoint")
        info = checkpoints.read_info(final / chosen)
        if is_rank0:  # a new branch starts here: the old one's newer checkpoints are no candidates any more
            moved = checkpoints.set_aside_after(final, info.step)
            if moved:
                log.info("resuming from the pinned %s: moved the newer %s to %s", chosen,
                         ", ".join(p.name for p in moved), moved[0].parent)  # fmt: skip
        _barrier()
    else:
        info = checkpoints.newest_complete(final)
    if info is None:
        return None
    if resized(spec, info, world_size) and "nvme" in offload_devices(spec.train):
        raise HpcftError(
            f"{info.path.name} was saved by {info.world_size} ranks with NVMe offload; this job has {world_size}. "
            "hpcft converts ZeRO checkpoints between world sizes without NVMe offload only",
            hint=f"resume with {info.world_size} ranks, or `hpcft export RUN` and start a new run from the model",
        )
    log.info("resuming from %s (step %d)", info.path, info.step)
    return str(info.path)


def resized(spec: JobSpec, info: checkpoints.CheckpointInfo, world_size: int) -> bool:
    """True when ``info`` holds ZeRO shards of another number of ranks than this job's."""
    return spec.train.zero > 0 and info.world_size not in (None, world_size)


def with_save_steps(spec: JobSpec, run: Path) -> JobSpec:
    """``spec`` with ``train.save_steps: auto`` replaced by this job's choice (``plan.save_interval.chosen``)."""
    if spec.train.save_steps != "auto":
        return spec
    steps = save_interval.chosen("auto", store.read_state(run), spec.train.save_steps_max)
    log.info("train.save_steps auto: every %d steps", steps)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, save_steps=steps))


def make_intervals_callback():
    """Keep this job's step intervals on a resume: a workaround for transformers' Trainer.

    Resuming, the Trainer replaces its ``TrainerState`` by the checkpoint's, and with it ``save_steps``,
    ``eval_steps`` and ``logging_steps``: the arguments it was given only get a warning
    (``Trainer._init_training_state``, ``trainer_utils.compare_trainer_and_checkpoint_args``, transformers
    5.x). So ``train.save_steps: auto``'s choice for this job — and ``hpcft resume -o train.save_steps=N`` —
    would never apply after the first checkpoint. Found by ``benchmarks/bench_save_interval.py``: the auto
    run chose 48–57 steps and saved every 200. ``on_train_begin`` comes after the state is loaded.
    """
    from transformers import TrainerCallback

    class CurrentIntervals(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            for kind in ("logging", "eval", "save"):
                value = getattr(args, f"{kind}_steps", None)
                if isinstance(value, int | float) and value >= 1:  # whole steps (below 1: a ratio, not hpcft's)
                    setattr(state, f"{kind}_steps", int(value))

    return CurrentIntervals()


def universal_if_resized(spec: JobSpec, resume: str | None, args, ds_config):
    """The Trainer's arguments for resuming from ``resume``: as they are, or — when its ZeRO shards are of
    another world size — for DeepSpeed's universal checkpoint, converted first (``train.ds_universal``)."""
    info = checkpoints.read_info(Path(resume)) if resume else None
    if info is None or not resized(spec, info, args.world_size):
        return args
    from hpcft.train import ds_universal
    from hpcft.train.args import training_arguments

    log.info("%s holds ZeRO-%d shards of %d ranks; this job has %d: resuming through a universal checkpoint",
             Path(resume).name, spec.train.zero, info.world_size, args.world_size)  # fmt: skip
    ds_universal.to_universal(Path(resume), args.process_index == 0)  # waits on files, not on a collective
    if spec.train.zero == 3:
        ds_universal.patch_zero3_universal_load()
    ds_config = {**ds_config, "checkpoint": {**(ds_config.get("checkpoint") or {}), "load_universal": True}}
    return training_arguments(spec, args.output_dir, ds_config)


def finish(trainer, spec: JobSpec, run: Path) -> None:
    """Save the final model (unless ``train.save`` is off) and mark the run ``FINISHED`` (rank 0).

    The model is written into ``RUN/.model.staging`` and published as ``RUN/model`` like a checkpoint
    (manifest, marker, rename: ``publish_model``); FINISHED comes after. A save cut short (a time limit, a
    dead node) leaves no ``RUN/model`` that looks whole: the next start exports it again (``finish_from``).
    """
    rank0 = trainer.is_world_process_zero()
    if spec.train.save:
        staged = run / MODEL_STAGING
        if rank0:
            shutil.rmtree(staged, ignore_errors=True)  # an interrupted final save of an earlier segment
        _barrier()
        trainer.save_model(str(staged))  # every rank: ZeRO-3 gathers the weights
        _barrier()
        if rank0:
            publish_model(staged, run, trainer.state.global_step)
    if rank0:
        lifecycle.mark_finished(run, trainer.state.global_step)
        log.info("finished at step %d", trainer.state.global_step)


def publish_model(staged: Path, run: Path, step: int) -> None:
    """Publish ``staged`` as the run's final model ``RUN/model`` (replacing an older or partial one)."""
    from hpcft import __version__

    publish.publish(staged, run / MODEL_DIR, {"step": step, "hpcft_version": __version__}, replace=True)


def reached_max_steps(spec: JobSpec, resume: str | None) -> bool:
    """True when the checkpoint to resume from is already at ``train.max_steps`` (nothing left to train).

    The HF Trainer would otherwise run one step past the end (at learning rate 0) and rewrite the
    final model.
    """
    step = checkpoints.step_of(Path(resume)) if resume else None
    return step is not None and 0 < spec.train.max_steps <= step


def finish_from(run: Path, resume: str, is_rank0: bool) -> None:
    """End a run whose newest checkpoint is its last step: the final model from that checkpoint, FINISHED."""
    step = checkpoints.step_of(Path(resume))
    if is_rank0:
        log.info("%s is at train.max_steps: nothing to train; the final model comes from it", Path(resume).name)
        why = publish.problem(run / MODEL_DIR)
        if why is not None:  # no final model, or one whose save was cut short
            from hpcft.train.export import export

            log.info("exporting the final model from %s (%s/: %s)", Path(resume).name, MODEL_DIR, why)
            staged = run / MODEL_STAGING
            shutil.rmtree(staged, ignore_errors=True)
            export(run, staged, step=step)
            publish_model(staged, run, step if step is not None else 0)
        lifecycle.mark_finished(run, step)
    _barrier()
