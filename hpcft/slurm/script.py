"""Render sbatch scripts from ``sbatch_templates/*.j2``; pure.

Templates hold no logic beyond ``if``/``for``: every value arrives already formatted and quoted
in a ``ScriptContext``. Two quoting rules apply and are kept here:

* ``#SBATCH`` lines are parsed by sbatch itself, not by the shell (Slurm src/sbatch/opt.c,
  ``_get_argument``): blanks end a value unless inside ``"…"``, a backslash escapes the next
  character but cannot protect a blank, and an unescaped ``#`` starts a comment even inside
  quotes. ``sbatch_quote`` writes for that parser (checked against real sbatch 22.05).
* The script body is bash: ``shlex.quote``.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hpcft import __version__
from hpcft.spec import ResourceSpec

_PKG = Path(__file__).resolve().parent.parent

_SBATCH_SPECIAL = set(' \t"\\#')
_SBATCH_ESCAPE = set('"\\#')


@dataclass(frozen=True)
class ScriptContext:
    """Everything a template may print, already formatted."""

    version: str
    template: str
    run_dir: str
    run_dir_q: str
    script_q: str
    sbatch_lines: tuple[str, ...]
    setup: tuple[str, ...]
    node_cmd: str
    srun_opts: str  # extra srun options (pyxis' --container-*), shell-quoted, each with a leading space
    nodes: int
    tasks_per_node: int
    description: str
    requeue: bool
    after_cmd: str
    begin_cmd: str
    warn_cmd: str  # hpcft's own time-limit warning, re-armed from each measured save (node/warn_timer.py)
    watch_cmd: str = ""  # head-node launchers: the watchdog of the other nodes' ranks ("": none)


def sbatch_quote(value: str) -> str:
    """Quote ``value`` for an ``#SBATCH`` line (sbatch's own directive parser, not bash)."""
    if not any(ch in _SBATCH_SPECIAL for ch in value):
        return value
    return '"' + "".join("\\" + ch if ch in _SBATCH_ESCAPE else ch for ch in value) + '"'


def filename_pattern(path: str) -> str:
    """``path`` as a literal in sbatch's filename patterns (``--output``): ``%`` is doubled.

    sbatch expands ``%j``, ``%x``… in the whole output path, including the directory part;
    a path with a backslash disables all expansion, so ``check_spec`` refuses backslashes.
    """
    return path.replace("%", "%%")


def format_sbatch_options(
    res: ResourceSpec,
    *,
    job_name: str,
    chdir: str,
    output: str,
    tasks_per_node: int = 1,
    signal_lead: int | None = None,
    comment: str | None = None,
    chain: bool = False,
    no_kill: bool = False,
) -> list[str]:
    """The one sbatch-flag formatter: resources → sorted ``--long-option=value`` strings.

    Field names are sbatch's long options in snake_case; ``extra_sbatch`` is appended as given.
    """
    opts = {
        "job-name": job_name,
        "chdir": chdir,
        "output": output,
        "open-mode": "append",
        "nodes": str(res.nodes),
        "ntasks-per-node": str(tasks_per_node),
    }
    if res.gpus_per_node:
        opts["gpus-per-node"] = str(res.gpus_per_node)
    for name in ("cpus_per_task", "time", "partition", "account", "qos", "constraint", "mem", "exclude"):
        value = getattr(res, name)
        if value is not None:
            opts[name.replace("_", "-")] = str(value)
    if comment:
        opts["comment"] = comment
    if signal_lead:
        # B: = to the batch shell only (its trap asks the ranks to checkpoint); --requeue lets it requeue itself.
        opts["signal"] = f"B:USR1@{signal_lead}"
    flags = [f"--{k}={v}" for k, v in sorted(opts.items())]
    if res.exclusive:
        flags.append("--exclusive")
    if no_kill:  # a failed node leaves the job, which keeps the others (run.shrink_after)
        flags.append("--no-kill")
    if signal_lead:
        flags.append("--no-requeue" if chain else "--requeue")  # chain: the run continues in a new job instead
    return sorted(flags) + list(res.extra_sbatch)


def sbatch_lines(flags: Sequence[str]) -> tuple[str, ...]:
    """``--key=value`` flags → ``#SBATCH`` lines with the value escaped for sbatch's parser."""
    lines = []
    for flag in flags:
        key, sep, value = flag.partition("=")
        lines.append(f"#SBATCH {key}{sep}{sbatch_quote(value)}" if sep else f"#SBATCH {sbatch_quote(flag)}")
    return tuple(lines)


def shell_join(argv: Sequence[str]) -> str:
    """Bash-quoted command line."""
    return " ".join(shlex.quote(a) for a in argv)


def make_context(
    template: str,
    *,
    run_dir: str,
    script_path: str,
    flags: Sequence[str],
    setup: Sequence[str],
    node_argv: Sequence[str],
    nodes: int,
    tasks_per_node: int,
    description: str,
    requeue: bool,
    after_argv: Sequence[str],
    begin_argv: Sequence[str],
    warn_argv: Sequence[str],
    srun_options: Sequence[str] = (),
    watch_argv: Sequence[str] = (),
) -> ScriptContext:
    """Build the context for ``template`` from unformatted values."""
    return ScriptContext(
        version=__version__,
        template=template,
        run_dir=run_dir,
        run_dir_q=shlex.quote(run_dir),
        script_q=shlex.quote(script_path),
        sbatch_lines=sbatch_lines(flags),
        setup=tuple(setup),
        node_cmd=shell_join(node_argv),
        srun_opts="".join(" " + shlex.quote(o) for o in srun_options),
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        description="\n".join(f"# {line}" for line in description.splitlines()),
        requeue=requeue,
        after_cmd=shell_join(after_argv),
        begin_cmd=shell_join(begin_argv),
        warn_cmd=shell_join(warn_argv),
        watch_cmd=shell_join(watch_argv) if watch_argv else "",
    )


def templates_dir() -> Path:
    """``sbatch_templates/``: inside the package in a wheel (mapped at build time), else the repository's."""
    for candidate in (_PKG / "sbatch_templates", _PKG.parent / "sbatch_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hpcft's sbatch_templates folder is missing from this installation ({_PKG})")


def render_sbatch(ctx: ScriptContext) -> str:
    """Render ``ctx.template`` with ``StrictUndefined`` (a missing value is an error, not blank)."""
    return _jinja().get_template(ctx.template).render(c=ctx)


@functools.cache
def _jinja() -> jinja2.Environment:
    """One environment per process: it caches the compiled templates (and reloads a changed file)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
