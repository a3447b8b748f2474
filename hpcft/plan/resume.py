"""``hpcft resume RUN``: a new job that continues a run from its newest complete checkpoint.

Decides the resumed spec (the run's spec with ``-o`` overrides and flags on top), the checkpoint,
and refuses what would lose work silently: no complete checkpoint (a restart from step 0), or a finished
run without more steps to train. On another world size it keeps the global batch (``_keep_global_batch``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError, RunError
from hpcft.plan.pipeline import Request, plan_job
from hpcft.plan.plan import Plan
from hpcft.rundir import checkpoints, lifecycle, store
from hpcft.rundir.layout import SPEC_FILE
from hpcft.spec import JobSpec, offload_devices, spec_to_dict
from hpcft.spec.layering import passthrough_problems
from hpcft.spec.model import rebatch


@dataclass(frozen=True)
class ResumePlan:
    """A resume, fully decided: the plan of the new job and the checkpoint it continues from."""

    plan: Plan
    checkpoint: checkpoints.CheckpointInfo | None
    explicit: bool
    notes: tuple[str, ...] = ()


def plan_resume(run: Path, *, overrides: Iterable[str] = (), flags: Mapping[str, Any] | None = None,
                checkpoint: int | None = None, python: str, now: datetime) -> ResumePlan:  # fmt: skip
    """Everything ``hpcft resume`` will do; reads the run directory, writes nothing."""
    old = store.load_run_spec(run)
    flags = dict(flags or {})
    notes: list[str] = []
    # A node loss shrank the last job (``run.shrink_after``) and spec.yaml with it: the run asked for more.
    requested = store.read_state(run).get("requested_nodes")
    chosen = flags.get("resources.nodes") is not None or any(o.startswith("resources.nodes=") for o in overrides)
    if requested and requested != old.resources.nodes and not chosen:
        flags["resources.nodes"] = requested
        notes.append(f"on the {requested} nodes the run asked for: a node loss left its last job on "
                     f"{old.resources.nodes} (--nodes N to choose)")  # fmt: skip
    req = Request(overrides=tuple(overrides), flags=flags, base=spec_to_dict(old),
                  base_source=str(run / SPEC_FILE), check_inputs=False)  # fmt: skip
    found: list[checkpoints.CheckpointInfo] = []

    def refine(spec: JobSpec, run_dir: str) -> JobSpec:
        missing = passthrough_problems(spec)  # the files were checked at submit; the shell is a new one
        if missing:
            raise ConfigError(missing, str(run / SPEC_FILE))
        if spec.launch.command and checkpoint is not None:
            raise RunError(
                f"--checkpoint {checkpoint}: {run.name} runs your own command, which picks its checkpoint itself "
                "(the newest in {output_dir}, as {resume_checkpoint}); nothing would use this one",
                hint="resume without --checkpoint; to go back to an older checkpoint, move the newer ones out of the "
                "output directory first",
            )
        if not spec.launch.command:  # hpcft's trainer; a user's own trainer finds its checkpoints itself
            found.append(_checkpoint(str(checkpoints.checkpoints_dir(spec, run)), checkpoint))
            _check_more_to_do(run, spec)
            info = found[0]
            spec = _keep_global_batch(old, spec, info.world_size, info.path.name, overrides, notes)
        return spec

    plan = _replan(run, req, refine, python=python, now=now)
    return ResumePlan(plan, found[0] if found else None, checkpoint is not None, tuple(notes))


def plan_resize(run: Path, nodes: int, *, python: str, now: datetime) -> ResumePlan:
    """The run's plan for a job SLURM gave ``nodes`` nodes that spec.yaml does not have: the global batch kept.

    ``hpcft begin-job`` asks it when the allocation differs from spec.yaml: after a node loss the job
    continues on fewer nodes (``run.shrink_after``), its requeue gets all of them again, or a person
    edited the ``#SBATCH`` lines. The global batch is spec.yaml's.
    """
    old = store.load_run_spec(run)
    req = Request(flags={"resources.nodes": nodes}, base=spec_to_dict(old), base_source=str(run / SPEC_FILE),
                  check_inputs=False)  # fmt: skip
    notes: list[str] = []

    def refine(spec: JobSpec, run_dir: str) -> JobSpec:
        if spec.launch.command:
            return spec  # a user's own trainer sizes its batch itself
        info = checkpoints.newest_complete(checkpoints.checkpoints_dir(spec, run))
        return _keep_global_batch(old, spec, info.world_size if info else None, info.path.name if info else SPEC_FILE,
                                  (), notes)  # fmt: skip

    return ResumePlan(_replan(run, req, refine, python=python, now=now), None, False, tuple(notes))


def _replan(run: Path, req: Request, refine, *, python: str, now: datetime) -> Plan:
    """The plan of ``req`` in the existing ``run``, its warning lead sized by the run's measured saves."""
    save_seconds = store.read_state(run).get("last_save_seconds")
    return plan_job(req, python=python, now=now, run_dir=str(run), save_seconds=save_seconds, refine=refine).plan


def _checkpoint(base: str, step: int | None) -> checkpoints.CheckpointInfo:
    if step is not None:
        path = Path(base) / f"{checkpoints.PREFIX}{step}"
        why = checkpoints.problem(path) if path.is_dir() else "no such checkpoint"
        if why:
            raise RunError(f"cannot resume from {path}: {why}", hint="`ls` the checkpoints directory; omit "
                           "--checkpoint to take the newest complete one")  # fmt: skip
        return checkpoints.read_info(path)
    info = checkpoints.newest_complete(Path(base))
    if info is None:
        raise RunError(
            f"no complete checkpoint under {base}: resuming would silently start again from step 0",
            hint="submit the job anew (`hpcft submit`) if that is what you want",
        )
    return info


def _keep_global_batch(old: JobSpec, spec: JobSpec, saved_by: int | None, source: str, overrides: Iterable[str],
                       notes: list[str]) -> JobSpec:  # fmt: skip
    """On another world size, ``train.batch_size``/``grad_accum`` set so that the global batch stays spec.yaml's
    (the one the checkpoints were trained with): the same samples make each step, and the Trainer skips exactly
    the consumed ones. ``saved_by``: the world size of the checkpoint ``source`` the job continues from.

    ZeRO shards of another world size go through DeepSpeed's universal checkpoint on the ranks
    (``hpcft.train.ds_universal``); NVMe offload is refused there, not converted.
    """
    world, trained = spec.ranks, old.ranks
    if saved_by not in (None, world) and spec.train.zero > 0 and "nvme" in offload_devices(spec.train):
        raise RunError(f"{source} holds ZeRO-{spec.train.zero} shards of {saved_by} ranks with NVMe "
                       f"offload; hpcft converts them to {world} ranks without NVMe offload only",
                       hint=f"resume with {saved_by} ranks, or `hpcft export RUN --out DIR`")  # fmt: skip
    if trained == world:
        return spec
    batch = old.global_batch
    if any(o.split("=", 1)[0].strip() in ("train.grad_accum", "train.batch_size") for o in overrides):
        notes.append(f"{trained} → {world} ranks with the batch you set: the global batch is now "
                     f"{spec.train.batch_size * spec.train.grad_accum * world} (was {batch}), so the data order "
                     "differs from here on")  # fmt: skip
        return spec
    if batch % world:
        raise RunError(f"{old.run.name} trains with a global batch of {batch} ({trained} ranks), "
                       f"which {world} ranks cannot share evenly",
                       hint="pick --nodes so that they can, or set -o train.batch_size / -o train.grad_accum "
                       "(the data order then differs)")  # fmt: skip
    new, changed = rebatch(spec.train, batch, world)
    converted = spec.train.zero and saved_by not in (None, world)
    notes.append(f"{trained} → {world} ranks: {', '.join(changed) or 'the same batch'} keeps the global "
                 f"batch at {batch}" + (f"; ZeRO-{spec.train.zero} shards are converted to DeepSpeed's universal "
                 "checkpoint on the first node" if converted else ""))  # fmt: skip
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **new))


def _check_more_to_do(run: Path, spec) -> None:
    text = lifecycle.finished_step(run)
    if text is None:
        return
    if not text.isdigit():
        return  # FINISHED without a step (written by hand, or damaged): the trainer knows where it stopped
    done = int(text)
    if 0 <= spec.train.max_steps <= done:
        raise RunError(
            f"{run.name} finished at step {done} and train.max_steps is {spec.train.max_steps}: nothing to resume",
            hint=f"train further with e.g. -o train.max_steps={done * 2}",
        )
