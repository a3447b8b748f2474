"""The ``hpcft`` command line: each command parses, calls the library, prints. No decisions here.

Heavy libraries (torch, transformers, deepspeed) are never imported on this path; ``init-demo``
loads ``hpcft.train`` only when it runs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from hpcft import __version__
from hpcft.errors import HpcftError
from hpcft.spec import BACKENDS, LAUNCHERS

RUNS_DIR_HELP = "directory holding runs [default: $HPCFT_RUNS_DIR or ./hpcft-runs]"


def _handle_errors(fn):
    """Turn ``HpcftError`` into a clean message and exit 1 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HpcftError as e:
            if os.environ.get("HPCFT_DEBUG"):
                raise
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def _console(min_width: int = 160):
    """A Rich console; when stdout is not a terminal (a pipe, a file), wide enough not to squash tables."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=max(shutil.get_terminal_size().columns, min_width))


def _runs_dir(value: str | None) -> str:
    from hpcft.config import default_runs_dir

    return value or default_runs_dir()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcft")
@click.option("--debug", is_flag=True, help="show tracebacks for errors")
def main(debug: bool) -> None:
    """Run LLM fine-tuning jobs on SLURM clusters.

    \b
    Typical use:
      hpcft init-demo demo                      # tiny model + data + demo/job.yaml
      hpcft plan demo/job.yaml --nodes 2        # show the script and launch commands
      hpcft submit demo/job.yaml --nodes 2 --wait
      hpcft status                              # every run: state, step, loss
      hpcft logs RUN -f                         # follow rank 0's output
    """
    if debug:
        os.environ["HPCFT_DEBUG"] = "1"


def _zero_value(ctx, param, value):
    """``--zero``: a stage as int, or ``auto`` (resolved by the memory planner in ``_load_plan``)."""
    return value if value in (None, "auto") else int(value)


def job_options(fn):
    """The curated flags shared by ``plan`` and ``submit`` (everything else: ``-o key=value``)."""
    options = [
        click.argument("job_file", type=click.Path(dir_okay=False)),
        click.argument("script_args", nargs=-1, type=click.UNPROCESSED),
        click.option("--nodes", type=int, help="number of nodes (resources.nodes)"),
        click.option("--gpus-per-node", type=int, help="GPUs per node; processes per node on CPU-only machines"),
        click.option(
            "--zero",
            type=click.Choice(["0", "1", "2", "3", "auto"]),
            callback=_zero_value,
            help="DeepSpeed ZeRO stage (train.zero); auto = the fastest that fits (memory planner, needs --gpu-mem)",
        ),
        click.option("--gpu-mem", type=click.FloatRange(min=0, min_open=True), help="GiB per GPU, for the planner"),
        click.option("--offload", type=click.Choice(["none", "cpu", "nvme"]), help="ZeRO offload (train.offload)"),
        click.option("--launcher", type=click.Choice(LAUNCHERS), help="how each node starts its processes"),
        click.option("--backend", type=click.Choice(BACKENDS), help="how the job reaches the nodes"),
        click.option("--time", "time_limit", help="time limit, sbatch format (e.g. 4:00:00)"),
        click.option("--partition", help="SLURM partition"),
        click.option("--runs-dir", help=RUNS_DIR_HELP),
        click.option("--profile", type=click.Path(dir_okay=False), help="cluster profile YAML (below the job file)"),
        click.option(
            "--accelerate-config", type=click.Path(dir_okay=False), help="your accelerate YAML (launcher accelerate)"
        ),
        click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE", help="set any key, e.g. -o train.lr=1e-4"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load_plan(
    job_file,
    script_args,
    nodes,
    gpus_per_node,
    zero,
    launcher,
    backend,
    time_limit,
    partition,
    runs_dir,
    profile,
    overrides,
    offload=None,
    gpu_mem=None,
    accelerate_config=None,
):
    from hpcft import config, plan
    from hpcft.slurm import client

    script = str(Path(script_args[0]).resolve()) if script_args else None
    flags = {
        "resources.nodes": nodes,
        "resources.gpus_per_node": gpus_per_node,
        "resources.time": time_limit,
        "resources.partition": partition,
        "train.zero": None if zero == "auto" else zero,
        "train.offload.device": offload,
        "launch.launcher": launcher,
        "launch.backend": backend,
        "run.runs_dir": runs_dir,
        "launch.script": script,
        "launch.script_args": list(script_args[1:]) if script_args else None,
        "launch.accelerate_config": str(Path(accelerate_config).resolve()) if accelerate_config else None,
    }
    spec = config.load_job(job_file, profile=profile, overrides=overrides, flags=flags)
    if zero == "auto":
        spec = config.load_job(job_file, profile=profile, overrides=overrides, flags=_auto_zero(spec, flags, gpu_mem))
    spec = plan.resolve_backend(spec, client.sbatch_available())
    config.check_inputs(spec)
    return plan.make_plan(spec, python=sys.executable, now=datetime.now())


def _auto_zero(spec, flags: dict, gpu_mem: float | None) -> dict:
    """``--zero auto``: the flags with the memory planner's choice filled in; says why on stderr."""
    from hpcft import memory

    flags, reason = memory.auto_flags(spec, flags, gpu_mem)
    click.secho(f"--zero auto → {reason}", fg="cyan", err=True)
    return flags


@main.command("plan")
@job_options
@_handle_errors
def plan_cmd(**kwargs) -> None:
    """Show what `submit` would do, without running anything.

    Prints the submit command, the batch script, node 0's launch command and the rendezvous.
    Arguments after `--` name a user script to run instead of the hpcft trainer.
    Ends with the memory planner: model-state memory of every ZeRO stage / offload choice.
    """
    p = _load_plan(**kwargs)
    _print_plan(p)
    _print_memory(p.spec, kwargs.get("gpu_mem"))


def _print_memory(spec, gpu_mem: float | None) -> None:
    from hpcft import memory

    click.secho("# --- memory planner (model states, DeepSpeed's estimators; activations extra) ---", bold=True)
    try:
        table = memory.planner_table(spec, gpu_mem)
    except HpcftError as e:
        click.echo(f"skipped: {e}")
        return
    _console().print(table)


def _print_plan(p) -> None:
    from hpcft.slurm.script import shell_join

    click.secho(f"# run directory: {p.run_dir}   (backend: {p.backend})", bold=True)
    click.secho("# submit command:", bold=True)
    click.echo(shell_join(p.submit_argv))
    for name, text in p.files.items():
        click.secho(f"# --- {name} ---", bold=True)
        click.echo(text.rstrip("\n"))
    click.secho("# --- node 0 launch command ---", bold=True)
    for key, value in sorted(p.node_preview.env.items()):
        click.echo(f"{key}={value}")
    click.echo(shell_join(p.node_preview.argv))
    click.secho("# --- rendezvous ---", bold=True)
    for key, value in p.rendezvous.items():
        click.echo(f"{key}: {value}")


@main.command()
@job_options
@click.option("--dry-run", is_flag=True, help="print the plan and stop (same as `hpcft plan`)")
@click.option("--wait", is_flag=True, help="return when the job ends, with its exit status")
@_handle_errors
def submit(dry_run: bool, wait: bool, **kwargs) -> None:
    """Submit a fine-tuning job described by JOB_FILE.

    \b
    Examples:
      hpcft submit job.yaml --nodes 4 --gpus-per-node 8 --time 12:00:00
      hpcft submit job.yaml -o train.lr=1e-4 -o train.max_steps=500
      hpcft submit job.yaml --nodes 2 -- my_train.py --epochs 3
    """
    from hpcft import backends

    p = _load_plan(**kwargs)
    if dry_run:
        _print_plan(p)
        return
    run, job_id = backends.submit(p)
    click.echo(f"submitted {run.name} as job {job_id} ({p.backend})")
    click.echo(f"  run dir: {run}")
    click.echo(f"  watch:   hpcft status {run.name}   |   hpcft logs {run.name} -f")
    if wait:
        sys.exit(_wait(run))


def _wait(run: Path) -> int:
    from hpcft import monitor

    last = [None]

    def show(st) -> None:
        line = f"{st.state} step {st.step if st.step is not None else '-'}/{st.total_steps or '?'}"
        if st.loss is not None:
            line += f" loss {st.loss:.4f}"
        if line != last[0]:
            click.echo(f"  [{time.strftime('%H:%M:%S')}] {line}", err=True)
            last[0] = line

    final = monitor.wait_for(run, show)
    ok = final.state == "COMPLETED"
    click.secho(f"{run.name}: {final.state}", fg="green" if ok else "red")
    return 0 if ok else 1


@main.command(hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_handle_errors
def node(run_dir: str) -> None:
    """Start this node's workers (run by srun once per node)."""
    from hpcft.node import exec_node

    exec_node(Path(run_dir).resolve())


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--nodes", type=int, help="nodes for the new job (same world size: exact continuation)")
@click.option("--checkpoint", type=int, metavar="STEP", help="continue from checkpoint-STEP (default: newest complete)")
@click.option(
    "-o", "overrides", multiple=True, metavar="KEY=VALUE", help="change any key, e.g. -o train.max_steps=2000"
)
@click.option("--wait", is_flag=True, help="return when the job ends, with its exit status")
@_handle_errors
def resume(run: str, runs_dir: str | None, nodes: int | None, checkpoint: int | None, overrides, wait: bool) -> None:
    """Continue RUN in a new job from its newest complete checkpoint (or --checkpoint STEP)."""
    from hpcft import resume as resume_mod
    from hpcft import runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    rp = resume_mod.plan_resume(path, overrides=overrides, flags={"resources.nodes": nodes},
                                checkpoint=checkpoint, python=sys.executable, now=datetime.now())  # fmt: skip
    job_id = resume_mod.apply_resume(rp)
    start = f"{rp.checkpoint.path.name}" if rp.checkpoint else "its own checkpoints (user script)"
    click.echo(f"resumed {path.name} as job {job_id} from {start}")
    if wait:
        sys.exit(_wait(path))


@main.command()
@click.argument("run")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="new directory for the model")
@click.option("--checkpoint", type=int, metavar="STEP", help="export checkpoint-STEP (default: newest complete)")
@click.option("--merge-lora", is_flag=True, help="merge a LoRA adapter into the base model")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@_handle_errors
def export(run: str, out: str, checkpoint: int | None, merge_lora: bool, dtype: str, runs_dir: str | None) -> None:
    """Write a checkpoint of RUN as a Hugging Face model directory (ZeRO shards consolidated)."""
    from hpcft import runs
    from hpcft.train.export import export as export_model

    path = runs.find_run(run, _runs_dir(runs_dir))
    ckpt = export_model(path, Path(out), step=checkpoint, merge_lora=merge_lora, dtype=dtype)
    click.echo(f"exported {ckpt.name} of {path.name} to {out} (loads with from_pretrained)")


def _question_options(fn):
    """One ``--flag`` per question of ``hpcft.accel_config.QUESTIONS``."""
    from hpcft.accel_config import QUESTIONS

    types = {"int": int, "float": float, "bool": click.BOOL, "str": str}
    for q in reversed(QUESTIONS):
        kind = click.Choice(q.choices) if q.kind == "choice" else types[q.kind]
        fn = click.option(f"--{q.key.replace('_', '-')}", q.key, type=kind, default=None, help=q.prompt)(fn)
    return fn


@main.command("config")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the accelerate YAML to write")
@click.option("--non-interactive", is_flag=True, help="never prompt: unanswered questions take their defaults")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@_question_options
@_handle_errors
def config_cmd(out: str, non_interactive: bool, force: bool, **given) -> None:
    """Write an accelerate config YAML (MULTI_GPU, DEEPSPEED or FSDP) for `--launcher accelerate`.

    Answers come from the flags; at a terminal, every other question that applies is asked the way
    `accelerate config` asks it. hpcft passes machine rank, main process address/port and process
    counts from the SLURM allocation at launch, overriding the file's.
    """
    from hpcft import accel_config

    answers = {k: v for k, v in given.items() if v is not None}
    if not non_interactive and sys.stdin.isatty():
        answers = accel_config.ask(answers, _prompt, on_error=lambda m: click.secho(m, fg="red", err=True))
    _write_accelerate_yaml(Path(out), accel_config.to_config(answers), force)


def _prompt(q) -> str:
    kind = click.Choice(q.choices) if q.kind == "choice" else None
    default = ("yes" if q.default else "no") if q.kind == "bool" else q.default
    return click.prompt(q.prompt, default=default, type=kind, show_choices=bool(q.choices))


def _write_accelerate_yaml(out: Path, config: dict, force: bool) -> None:
    import yaml

    from hpcft.errors import HpcftError

    if out.exists() and not force:
        raise HpcftError(f"{out} exists", hint="pass --force to overwrite it")
    out.write_text("# Written by `hpcft config`; use: hpcft submit JOB --launcher accelerate "
                   f"--accelerate-config {out}\n" + yaml.safe_dump(config, sort_keys=False))  # fmt: skip
    click.echo(f"wrote {out} ({config['distributed_type']})")
    click.echo(f"use it: hpcft submit JOB --launcher accelerate --accelerate-config {out}")


@main.command("after-job", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("rc", type=int)
@_handle_errors
def after_job(run_dir: str, rc: int) -> None:
    """Decide finished / requeue / fail when the launcher ends (run by the batch script)."""
    from hpcft.requeue import after_job as decide_and_apply

    sys.exit(decide_and_apply(Path(run_dir).resolve(), rc))


@main.command("init-demo")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--hidden-size", default=128, show_default=True, help="model width (512 gives ~8M parameters)")
@_handle_errors
def init_demo(directory: str, hidden_size: int) -> None:
    """Build a tiny Llama model, a tokenizer, a dataset and DIRECTORY/job.yaml.

    Everything is made locally (no model hub). Then: hpcft submit DIRECTORY/job.yaml --wait
    """
    from hpcft.train.demo import build_demo

    job = build_demo(Path(directory), hidden_size=hidden_size)
    click.echo(f"wrote {job}\nnext: hpcft submit {job} --wait")


@main.command("list")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@_handle_errors
def list_cmd(runs_dir: str | None) -> None:
    """List runs, oldest first, with their state."""
    _status_table(None, runs_dir, as_json=False)


@main.command()
@click.argument("run", required=False)
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="refresh in place until every shown run has ended (Ctrl-C stops)")
@click.option("--interval", type=click.FloatRange(min=1.0), default=2.0, show_default=True, help="seconds, --watch")
@_handle_errors
def status(run: str | None, runs_dir: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """State, jobs, nodes, elapsed, progress, loss, tokens/s, ETA, checkpoint and restarts of runs.

    The state comes from squeue while a job is known there and from sacct once it has ended;
    SLURM is asked once per refresh for all runs shown.
    """
    if watch and not as_json:
        _watch_status(run, runs_dir, interval)
    else:
        _status_table(run, runs_dir, as_json)


def _status_paths(ref: str | None, runs_dir: str | None) -> tuple[str, list[Path]]:
    from hpcft import runs

    base = _runs_dir(runs_dir)
    return base, ([runs.find_run(ref, base)] if ref else runs.list_runs(base))


def _status_table(ref: str | None, runs_dir: str | None, as_json: bool) -> None:
    from hpcft import monitor

    base, paths = _status_paths(ref, runs_dir)
    rows = monitor.run_statuses(paths)
    if as_json:
        data = [r.to_dict() for r in rows]
        click.echo(json.dumps(data[0] if ref else data, indent=2))
        return
    if not rows:
        click.echo(f"no runs under {base}")
        return
    _console().print(monitor.status_table(rows))


def _watch_status(ref: str | None, runs_dir: str | None, interval: float) -> None:
    from rich.live import Live

    from hpcft import monitor

    with Live(console=_console(), auto_refresh=False) as live:
        try:
            while True:
                base, paths = _status_paths(ref, runs_dir)
                rows = monitor.run_statuses(paths)  # one squeue (+ sacct) call for all runs
                live.update(monitor.status_table(rows) if rows else f"no runs under {base}", refresh=True)
                if all(r.ended for r in rows):
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the run ends (across requeues)")
@click.option("--rank", type=int, help="this rank's log (RUN/logs/rank-N.log) instead of the job output")
@click.option("--node", help="the rank-log lines of the ranks that ran on this node")
@click.option("--job", "job_id", help="this job's output (an older job of the run) instead of the newest")
@_handle_errors
def logs(run: str, runs_dir: str | None, follow: bool, rank: int | None, node: str | None, job_id: str | None) -> None:
    """Show a run's output: rank 0's console (the newest job's output), one rank's log, or one node's ranks."""
    from hpcft import logs as logs_mod
    from hpcft import runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    try:
        for chunk in logs_mod.stream(path, rank=rank, follow=follow, node=node, job=job_id):
            click.echo(chunk, nl=False)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write [default: RUN/metrics.png]")
@_handle_errors
def plot(run: str, runs_dir: str | None, out: str | None) -> None:
    """Plot train/eval loss and tokens/s against step into a PNG; restarts are dashed lines."""
    from hpcft import plot as plot_mod
    from hpcft import runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    data = plot_mod.extract_series(runs.read_metrics(path))
    written = plot_mod.write_plot(data, Path(out) if out else path / "metrics.png", title=path.name)
    counts = f"{len(data.train_loss)} train, {len(data.eval_loss)} eval points, {len(data.restarts)} restart(s)"
    click.echo(f"wrote {written} ({counts})")


def _state_printer():
    """A poll callback printing the job state (to stderr) whenever it changes."""
    last = [None]

    def show(st) -> None:
        if st.state != last[0]:
            click.echo(f"  [{time.strftime('%H:%M:%S')}] {st.state}", err=True)
            last[0] = st.state

    return show


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False))
@click.option("--nodes", type=int, help="nodes to check [default: the job file's, else 2]")
@click.option("--gpus-per-node", type=int, help="GPUs per node to expect [default: the job file's]")
@click.option("--partition", help="SLURM partition")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@click.option("--profile", type=click.Path(dir_okay=False), help="cluster profile YAML (below the job file)")
@click.option("--check-nvme", is_flag=True, help="also check the NVMe offload path (builds async_io: minutes)")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds before the probe is cancelled")
@click.option("--shared-dir", multiple=True, help="another directory all nodes must share ({node} = node name)")
@click.option("-o", "overrides", multiple=True, metavar="KEY=VALUE", help="set any key of the job file")
@_handle_errors
def doctor(job_file, nodes, gpus_per_node, partition, runs_dir, profile, check_nvme, timeout, shared_dir, overrides):
    """Submit a small probe job on N nodes and check they can run JOB_FILE; exit 1 on any failure.

    Checks rendezvous and an all-reduce (latency, bandwidth), that the run directory and the HF
    cache are one shared filesystem (write, read, rename, lock), the NVMe path (--check-nvme),
    GPU count, and equal Python/torch/hpcft versions on every node.
    """
    from hpcft import backends
    from hpcft import doctor as doc

    flags = {
        "resources.nodes": nodes or (None if job_file else 2),
        "resources.gpus_per_node": gpus_per_node,
        "resources.partition": partition,
        "run.runs_dir": runs_dir,
    }
    spec = doc.doctor_spec(job_file, flags, overrides, profile, timeout)
    p = doc.make_doctor_plan(
        spec, python=sys.executable, now=datetime.now(), check_nvme=check_nvme, shared_dirs=shared_dir
    )
    run, job_id = backends.submit(p)
    click.echo(f"doctor: probe job {job_id} on {spec.resources.nodes} node(s); run dir {run}", err=True)
    final = doc.wait(run, timeout, _state_printer())
    rows = doc.collect(run, final.state, final.nodelist)
    _console(200).print(doc.doctor_table(rows))
    sys.exit(1 if doc.failed(rows) else 0)


@main.command()
@click.argument("run")
@click.option("--runs-dir", help=RUNS_DIR_HELP)
@_handle_errors
def cancel(run: str, runs_dir: str | None) -> None:
    """Cancel a run's job (scancel, or stop the local process group)."""
    from hpcft import backends, runs

    path = runs.find_run(run, _runs_dir(runs_dir))
    job_id = backends.cancel(path)
    click.echo(f"cancelled job {job_id} of {path.name}")


if __name__ == "__main__":
    main()
