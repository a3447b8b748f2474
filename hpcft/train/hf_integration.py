"""hpcft's service for a user's own ``transformers.Trainer`` (TRL's, LLaMA-Factory's, a run_clm-style
script's), with no edit of the user's script.

``hpcft node`` puts ``hpcft/train/site`` on the ranks' PYTHONPATH (``launch.hf_integration``, on by
default for ``launch.command``); its ``sitecustomize`` calls ``install``, which patches ``Trainer`` and
``TrainingArguments`` when — and only if — the program imports them. Every Trainer then:

- reports to the run directory like hpcft's own trainer (``metrics.jsonl``: step/total, loss,
  tokens/s), so ``hpcft status``, ``plot`` and ``logs`` follow it;
- checkpoints at the next step on hpcft's warning (``RUN/PREEMPT``: time limit, preemption; the same
  agreement as hpcft's trainer) and marks the run for requeue;
- records how long each save took (``state.json``), which re-arms the warning before the time limit;
- resumes, when ``train()`` gets no ``resume_from_checkpoint``, from the newest complete checkpoint
  this run wrote into its ``output_dir`` (after a requeue, an in-job restart or ``hpcft resume``);
- stops at once with a clear error when its world size differs from nodes × processes per node;
- with ``--deepspeed`` on a node without CUDA, gets DeepSpeed's process group over gloo first, as
  hpcft's trainer does (``cpu_workarounds.init_deepspeed_gloo``).
Plain torch.distributed programs never import the Trainer: they keep the environment and the
PREEMPT file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("hpcft.train")
ENV = "HPCFT_HF_INTEGRATION"
WORLD_ENV = "HPCFT_WORLD_SIZE"
_BUILDER = "deepspeed.ops.op_builder.builder"  # DeepSpeed's OpBuilder: its ops load as the cache built them
_TARGETS = ("transformers.trainer", "transformers.training_args", _BUILDER)


def install() -> None:
    """Patch ``transformers.Trainer`` when it is imported (nothing else is touched or imported now)."""
    if os.environ.get(ENV) != "1" or not os.environ.get("HPCFT_RUN_DIR"):
        return
    from hpcft.train.ds_ops import use_job_toolchain

    use_job_toolchain()  # DeepSpeed's ops load with the ninja that built them
    for name in _TARGETS:
        if name in sys.modules:
            patch_module(sys.modules[name])
    if not any(isinstance(f, _TrainerFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TrainerFinder())


def patch_module(module) -> None:
    """Patch what hpcft needs in ``transformers.trainer``, ``transformers.training_args`` or DeepSpeed's builder.

    The builder as soon as DeepSpeed imports it, whoever loads an op first: ``--deepspeed`` makes
    ``TrainingArguments`` start DeepSpeed's process group (and load its CPU ``shm_comm`` op) before TRL's
    or a script's Trainer is even imported. Through torch's JIT step that op compiled for minutes in the
    job wherever the cache was last built from another environment's paths (``hpcft.train.ds_ops``).
    """
    if module.__name__ == _BUILDER:
        from hpcft.train.ds_ops import use_prebuilt_ops

        use_prebuilt_ops()  # the job's prebuilt DeepSpeed ops load as built, as in hpcft's own ranks
    elif module.__name__ == "transformers.trainer":
        from hpcft.train.ds_lazy import keep_deepspeed_lazy

        keep_deepspeed_lazy()  # accelerate, imported by the Trainer, would import deepspeed for any job
        patch(module.Trainer)
    else:
        patch_arguments(module.TrainingArguments)


class _TrainerFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of ``_TARGETS`` as usual and patches them right after they execute."""

    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            patch_module(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def patch(trainer_cls) -> None:
    """Wrap ``Trainer.__init__`` (callbacks, world check) and ``Trainer.train`` (resume, requeue mark)."""
    if getattr(trainer_cls, "_hpcft_patched", False):
        return
    init, train = trainer_cls.__init__, trainer_cls.train

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        attach(self)

    def patched_train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is None:
            resume_from_checkpoint = resume_point(self)
        try:
            result = train(self, resume_from_checkpoint, *args, **kwargs)
        finally:
            preempt = getattr(self, "_hpcft_preempt", None)
            saved = preempt is not None and preempt.preempted
            if saved and self.is_world_process_zero():
                from hpcft.train.preemption import mark_requeue

                mark_requeue(run_dir(), self.state.global_step)
        if saved:
            stop_after_save_for_requeue(self.state.global_step)
        return result

    trainer_cls.__init__, trainer_cls.train = __init__, patched_train
    trainer_cls._hpcft_patched = True


def stop_after_save_for_requeue(step: int) -> None:
    """End this rank now, successfully: it saved step ``step`` for the requeue, and training is not over.

    Returning from ``train()`` would run the rest of the user's ``main()`` as if training had finished —
    TRL's script then saves the final model (and with ``--push_to_hub`` publishes it) inside the warning's
    lead. Every rank stops here with status 0 (the ranks agreed on the save), so the job ends as saved for
    requeue (``RUN/REQUEUE``), not as a crash.
    """
    from hpcft.train.dist import exit_cleanly

    print(f"hpcft: saved step {step} for the requeue; this process stops here and the run continues from it",
          flush=True)  # fmt: skip
    exit_cleanly(0)


def patch_arguments(arguments_cls) -> None:
    """``TrainingArguments`` with DeepSpeed on a node without CUDA: DeepSpeed's process group over gloo first.

    The same workaround hpcft's trainer applies (``cpu_workarounds.init_deepspeed_gloo``): without it
    zero.Init sees a world of 1 and DeepSpeed has no CPU backend of its own here.
    """
    if getattr(arguments_cls, "_hpcft_patched", False):
        return
    post_init = arguments_cls.__post_init__

    def __post_init__(self):
        if getattr(self, "deepspeed", None):
            from hpcft.train import cpu_workarounds

            cpu_workarounds.init_deepspeed_gloo(cpu_workarounds.has_cuda())
        post_init(self)

    arguments_cls.__post_init__ = __post_init__
    arguments_cls._hpcft_patched = True


def run_dir() -> Path:
    return Path(os.environ["HPCFT_RUN_DIR"])


def attach(trainer) -> None:
    """Check the world and add hpcft's metrics and preemption callbacks to one Trainer."""
    from hpcft.train.checkpoint import make_save_timer_callback
    from hpcft.train.heartbeat import make_heartbeat_callback
    from hpcft.train.metrics import make_metrics_callback
    from hpcft.train.preemption import exit_if_saved_for_requeue, make_preemption_callback

    check_world(trainer.args.world_size, int(os.environ.get(WORLD_ENV) or 0), trainer.args.process_index == 0)
    exit_if_saved_for_requeue(run_dir())
    check_deepspeed_kept(trainer)
    if getattr(trainer.args, "include_num_input_tokens_seen", None) in ("no", False):
        trainer.args.include_num_input_tokens_seen = "all"  # tokens/s in metrics.jsonl (one small gather a step)
    trainer._hpcft_preempt = make_preemption_callback(run_dir())
    trainer.add_callback(make_metrics_callback(run_dir()))
    trainer.add_callback(trainer._hpcft_preempt)
    trainer.add_callback(make_save_timer_callback(run_dir()))  # it times the user's on_save callbacks too
    trainer.add_callback(make_heartbeat_callback(trainer))  # last: it sees whether a step saves or evaluates


def check_deepspeed_kept(trainer) -> None:
    """Stop when accelerate was told to use DeepSpeed (``ACCELERATE_USE_DEEPSPEED``) but dropped it.

    accelerate sets up DeepSpeed only when not on CPU (accelerate/state.py: ``ACCELERATE_USE_DEEPSPEED
    == "true" and not cpu``): with ``--use_cpu`` a ZeRO job would train as plain DDP without a word, and
    under ZeRO-3 crash in its first forward on partitioned weights.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true" or trainer.is_deepspeed_enabled:
        return
    kind = trainer.accelerator.distributed_type
    problem = (f"the accelerate config asks for DeepSpeed, but accelerate set up {kind} without it: accelerate "
               "enables DeepSpeed only off CPU (use_cpu). HINT: on CPU-only nodes run hpcft's trainer with --zero, "
               "or drop --zero for your command")  # fmt: skip
    stop_fatal(problem, trainer.args.process_index == 0)


def world_problem(seen: int, expected: int) -> str | None:
    """Why a Trainer seeing ``seen`` processes must not train in a job of ``expected``; pure."""
    if not expected or seen == expected:
        return None
    return (f"this Trainer sees a world of {seen} process(es), but the job runs {expected} "
            f"({os.environ.get('NNODES', '?')} nodes × {os.environ.get('NPROC_PER_NODE', '?')}): its ranks would "
            "train apart, each on its own. HINT: on nodes without GPUs pass --use_cpu (TrainingArguments.use_cpu); "
            "check that the launcher started every process (hpcft logs RUN)")  # fmt: skip


def check_world(seen: int, expected: int, is_first: bool) -> None:
    """Stop at once (every rank) when the world is wrong; the run is marked FATAL: a rerun repeats it."""
    problem = world_problem(seen, expected)
    if problem is not None:
        stop_fatal(problem, is_first)


def stop_fatal(problem: str, is_first: bool) -> None:
    """Stop this rank with ``problem``; the first rank marks the run FATAL (neither restarted nor requeued)."""
    if is_first:
        from hpcft.rundir import lifecycle

        lifecycle.mark_fatal(run_dir(), f"configuration error: {problem}")
    raise SystemExit(f"hpcft: {problem}")


def resume_point(trainer) -> str | None:
    """The newest complete checkpoint this run wrote into the Trainer's output_dir (None: start fresh)."""
    from hpcft.rundir.checkpoints import newest_resumable

    found = newest_resumable(Path(trainer.args.output_dir))
    if found is None or found.stat().st_mtime < run_started():
        return None  # none, or older than this run: another run's output_dir, not ours to continue
    if trainer.args.process_index == 0:
        log.warning("hpcft: resuming from %s", found)
        print(f"hpcft: resuming from {found}", flush=True)
    return str(found)


def run_started() -> float:
    """When the run was created (state.json): checkpoints from before belong to someone else."""
    from datetime import datetime

    from hpcft.errors import HpcftError
    from hpcft.rundir import store

    try:
        return datetime.fromisoformat(store.read_state(run_dir())["created"]).timestamp()
    except (HpcftError, KeyError, ValueError):
        return float("inf")
