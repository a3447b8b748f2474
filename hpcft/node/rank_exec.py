"""``python -m hpcft.node.rank_exec KIND TARGET ARG...``: start a user's command in a rank, at every (re)start.

Every launcher runs a user's ``launch.command`` through this instead of directly, so what can change between
starts of the ranks in one job is computed when each start happens, not once when ``hpcft node`` began:

- the placeholders are filled in here, from the values the node exported (``HPCFT_<NAME>``), with
  ``{resume_checkpoint}`` — and ``HPCFT_RESUME_CHECKPOINT`` — the newest resumable checkpoint *now*: after
  torchrun's or ``hpcft node``'s in-job restart a command continues from what the crashed one saved, not
  from what existed when the job began;
- on a fresh start (no checkpoint yet) an argument that is only ``{resume_checkpoint}`` is dropped with the
  flag before it, and ``--flag={resume_checkpoint}`` is dropped: an HF script given
  ``--resume_from_checkpoint {resume_checkpoint}`` starts fresh instead of failing on ``''``;
- the first rank records the start (``store.record_rank_start``): a second start in one job segment is an
  in-job restart, an event charged to ``run.max_failures``, as for hpcft's own trainer.

Then it replaces itself (``exec``) with the command: same process, same signals. Nothing here imports torch.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcft.launchers.command import PLACEHOLDERS, expand
from hpcft.rundir import checkpoints, store
from hpcft.slurm.env import torch_rank_env

RESUME = "{resume_checkpoint}"


def values(env: Mapping[str, str], resume: str) -> dict[str, str]:
    """The placeholders' values for this start: the node's (``HPCFT_<NAME>``), the resume point fresh."""
    return {**{name: env.get(f"HPCFT_{name.upper()}", "") for name in PLACEHOLDERS}, "resume_checkpoint": resume}


def drop_empty_resume(args: Sequence[str]) -> list[str]:
    """``args`` without ``--flag {resume_checkpoint}`` / ``--flag={resume_checkpoint}`` (for a fresh start)."""
    out: list[str] = []
    for arg in args:
        if arg == RESUME:
            if out and out[-1].startswith("-"):
                out.pop()
            continue
        if arg.startswith("-") and arg.endswith(f"={RESUME}"):
            continue
        out.append(arg)
    return out


def rank_argv(kind: str, target: str, args: Sequence[str], env: Mapping[str, str], python: str,
              resume: str, launcher_args: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """The command this rank runs now, its placeholders filled in (``resume``: the newest checkpoint, or '').

    ``launcher_args``: what the launcher put after the program it started (the deepspeed launcher's
    ``--local_rank=N``), given to the command where the launcher would have put it: right after it.
    """
    filled = [*launcher_args, *expand(list(args) if resume else drop_empty_resume(args), values(env, resume))]
    if kind == "module":
        return [python, "-u", "-m", target, *filled]
    if kind == "script":
        return [python, "-u", target, *filled]
    return [target, *filled]


LAUNCHER_ARGS = ("--local_rank", "--local-rank")  # deepspeed's launch.py: `python -u -m MODULE --local_rank=N ...`


def resume_now(env: Mapping[str, str]) -> str:
    """The newest checkpoint a trainer can continue from in the output directory, as of now; '' if none."""
    output = env.get("HPCFT_OUTPUT_DIR")
    return str(checkpoints.newest_resumable(Path(output)) or "") if output else ""


def first_rank(env: Mapping[str, str]) -> bool:
    """This process is the job's first: global rank 0 under a launcher (mpirun's rank names too), node 0
    with ``--launcher none`` (one process per node, no rank)."""
    ranks = {**env, **torch_rank_env(env)}
    return ranks["RANK"] == "0" if "RANK" in ranks else env.get("NODE_RANK", "0") == "0"


def main(argv: list[str]) -> None:
    """Fill in, record the start, exec the command."""
    launcher_args = []
    while argv and argv[0].startswith(LAUNCHER_ARGS):
        launcher_args.append(argv.pop(0))
    if len(argv) < 2 or argv[0] not in ("module", "script", "program"):
        sys.exit("usage: python -m hpcft.node.rank_exec module|script|program TARGET [ARG...]")
    env = dict(os.environ)
    resume = resume_now(env)
    command = rank_argv(argv[0], argv[1], argv[2:], env, sys.executable, resume, launcher_args)
    run, job = env.get("HPCFT_RUN_DIR"), env.get("HPCFT_JOB_ID", "local")
    if first_rank(env):
        print(f"hpcft: rank 0 runs {shlex.join(command)}", flush=True)  # the command as filled in at this start
        event = store.record_rank_start(Path(run), job) if run and job != "local" else None
        if event:
            print(f"hpcft: {event['reason']} (an in-job restart, charged to run.max_failures)", flush=True)
    env["HPCFT_RESUME_CHECKPOINT"] = resume
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
