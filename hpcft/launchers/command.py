"""``launch.command``: the user's own trainer — what kind of command it is, and its placeholders; pure.

A command is an argv: a ``.py`` file, ``-m module``, or any program in the job's environment
(``launch.python``'s bin, or PATH after ``launch.setup``), with its arguments. Arguments may hold
placeholders the node fills in when it starts the command — ``{run_dir}``, ``{ds_config}`` … — in
``str.format`` syntax (``{{`` and ``}}`` for literal braces). An empty command runs hpcft's trainer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

# name → what it expands to on the node (also exported to every rank as HPCFT_<NAME>).
PLACEHOLDERS: Mapping[str, str] = {
    "run_dir": "the run directory",
    "ds_config": "the run's DeepSpeed config (RUN/ds_config.json; needs --zero or train.deepspeed_config)",
    "accelerate_config": "the accelerate config: launcher accelerate's, or (launcher none) this node's own",
    "output_dir": "where checkpoints go (train.output, default RUN/checkpoints)",
    "resume_checkpoint": "the newest complete checkpoint in output_dir; empty when starting fresh",
    "node_rank": "this node's rank (SLURM_NODEID)",
    "nnodes": "the number of nodes",
}
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def command_kind(command: Sequence[str]) -> str:
    """``hpcft`` (no command), ``module`` (``-m mod``), ``script`` (a ``.py`` file) or ``program``."""
    if not command:
        return "hpcft"
    if command[0] == "-m":
        return "module"
    return "script" if command[0].endswith(".py") else "program"


def placeholders_in(arg: str) -> list[str]:
    """The placeholder names in one argument; ValueError for unbalanced braces."""
    return [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]


# Commands that start ranks themselves. Under a launcher that starts ranks, every rank would start a world of
# its own and the rendezvous collapses ("Failed to recv, got 0 bytes") after the whole failure budget.
SELF_LAUNCHING_PROGRAMS = {"torchrun": "", "deepspeed": "", "accelerate": "launch", "llamafactory-cli": "train"}
SELF_LAUNCHING_MODULES = ("torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch",
                          "deepspeed.launcher.runner")  # fmt: skip
TRL_NOT_LAUNCHING = ("env", "vllm-serve")  # every other `trl` subcommand runs `accelerate launch` itself


def launches_itself(command: Sequence[str]) -> str | None:
    """How ``command`` starts its own ranks (``trl sft`` → ``trl sft``), or None for a plain program.

    llamafactory-cli starts torchrun when FORCE_TORCHRUN is set, which every hpcft rank environment sets.
    """
    kind = command_kind(command)
    if kind == "module":
        return f"-m {command[1]}" if len(command) > 1 and command[1] in SELF_LAUNCHING_MODULES else None
    if kind != "program":
        return None
    name, sub = command[0].rsplit("/", 1)[-1], (command[1] if len(command) > 1 else "")
    if name == "trl":
        return f"trl {sub}" if sub and sub not in TRL_NOT_LAUNCHING else None
    if name in SELF_LAUNCHING_PROGRAMS and SELF_LAUNCHING_PROGRAMS[name] in ("", sub):
        return f"{name} {sub}".strip() if SELF_LAUNCHING_PROGRAMS[name] else name
    return None


def check_command(command: Sequence[str], *, zero: bool, launcher: str) -> list[str]:
    """Problems of ``launch.command``: a bare ``-m``, a bad module name, unknown or unusable placeholders, a
    command that starts its own ranks under a launcher that starts ranks too."""
    problems = []
    tool = launches_itself(command)
    if tool and launcher != "none":
        problems.append(f"launch.command: `{tool}` starts its own processes, and launcher {launcher} would run it in "
                        f"every rank, each starting a world of its own (HINT: --launcher none runs it once per node "
                        f"with the rendezvous in its environment: hpcft submit JOB --launcher none -- "
                        f"{' '.join(command)})")  # fmt: skip
    if command and command[0] == "-m" and (len(command) < 2 or not _MODULE_RE.match(command[1])):
        got = repr(command[1]) if len(command) > 1 else "nothing"
        problems.append(f"launch.command: -m needs a module name such as pkg.train, got {got}")
    for arg in command[1:]:
        try:
            names = placeholders_in(arg)
        except ValueError as e:
            problems.append(f"launch.command: {arg!r}: {e} (HINT: write {{{{ and }}}} for literal braces)")
            continue
        for name in names:
            if name not in PLACEHOLDERS:
                known = ", ".join(f"{{{n}}}" for n in PLACEHOLDERS)
                problems.append(f"launch.command: unknown placeholder {{{name}}} in {arg!r} (known: {known})")
            elif name == "ds_config" and not zero:
                problems.append("launch.command: {ds_config} but the job has no DeepSpeed config "
                                "(HINT: --zero 1/2/3 or train.deepspeed_config)")  # fmt: skip
            elif name == "accelerate_config" and launcher not in ("accelerate", "none"):
                problems.append(f"launch.command: {{accelerate_config}} needs --launcher accelerate or none, got "
                                f"{launcher}")  # fmt: skip
    return problems


def literal(arg: str) -> str:
    """``arg`` with its braces escaped: it reaches the command unchanged (e.g. the doctor's ``{node}``)."""
    return arg.replace("{", "{{").replace("}", "}}")


def expand(args: Sequence[str], values: Mapping[str, str]) -> tuple[str, ...]:
    """The arguments with their placeholders filled in (checked by ``check_command`` at plan time)."""
    return tuple(arg.format_map(values) for arg in args)
