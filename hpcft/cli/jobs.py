"""Commands that plan, submit and run jobs: plan, submit, init-demo (the node side: ``cli.nodeside``)."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click

from hpcft.cli.base import RUNS_DIR_HELP, Number, _console, _handle_errors, cluster_option, env_from_stdin_option, main
from hpcft.errors import HpcftError
from hpcft.spec import BACKENDS, LAUNCHERS


def _zero_value(ctx, param, value):
    """``--zero``: a stage as int, or ``auto`` (resolved by the memory planner in ``_load_plan``)."""
    return value if value in (None, "auto") else int(value)


def job_options(fn, nodes: bool = True):
    """The curated flags shared by ``plan``, ``submit`` and ``bench scale`` (everything else: ``-o key=value``);
    ``bench scale`` has a ``--nodes`` of its own."""
    options = [
        click.argument("job_file", type=click.Path(dir_okay=False)),
        click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND [ARGS]...]"),
        *([click.option("--nodes", type=int, help="number of nodes (resources.nodes)")] if nodes else []),
        click.option("--gpus-per-node", type=int, help="GPUs per node; processes per node on CPU-only machines"),
        click.option(
            "--zero",
            type=click.Choice(["0", "1", "2", "3", "auto"]),
            callback=_zero_value,
            help="DeepSpeed ZeRO stage (train.zero); auto = the fastest that fits (memory planner, needs --gpu-mem)",
        ),
        click.option("--gpu-mem", type=Number(min=0, min_open=True), help="GiB per GPU, for the planner"),
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


def _load_plan(job_file, command, zero, profile, overrides, gpu_mem=None, run_dir=None, **flag_values):
    """Parse the curated flags into a pipeline request and plan it (``hpcft.plan.pipeline``), in ``run_dir``
    (default: a new run directory)."""
    from hpcft.plan import pipeline
    from hpcft.spec.layering import is_path

    command = list(command)
    if command and is_path(command[0]):
        command[0] = str(Path(command[0]).resolve())
    accelerate_config = flag_values.pop("accelerate_config", None)
    flags = {
        **{FLAG_KEYS[name]: value for name, value in flag_values.items()},
        "train.zero": None if zero == "auto" else zero,
        "launch.command": command or None,
        "launch.accelerate_config": str(Path(accelerate_config).resolve()) if accelerate_config else None,
    }
    req = pipeline.Request(job_file=job_file, profile=profile, overrides=tuple(overrides), flags=flags,
                           zero_auto=zero == "auto", gpu_mem=gpu_mem)  # fmt: skip
    planned = pipeline.plan_job(req, python=sys.executable, now=datetime.now(), run_dir=run_dir)
    for note in planned.notes:
        click.secho(note, fg="cyan", err=True)
    return planned.plan


# The curated flags → the spec keys they set (highest precedence, spec.layering).
FLAG_KEYS = {
    "nodes": "resources.nodes",
    "gpus_per_node": "resources.gpus_per_node",
    "time_limit": "resources.time",
    "partition": "resources.partition",
    "offload": "train.offload.device",
    "launcher": "launch.launcher",
    "backend": "launch.backend",
    "runs_dir": "run.runs_dir",
}


@main.command("plan")
@job_options
@cluster_option
@_handle_errors
def plan_cmd(cluster, **kwargs) -> None:
    """Show what `submit` would do, without running anything.

    Prints the submit command, the batch script, node 0's launch command and the rendezvous.
    Arguments after `--` name your own trainer (a .py file, -m module or a program) instead of hpcft's.
    Ends with the memory planner: model-state memory of every ZeRO stage / offload choice.
    With --cluster: the local files the job names, which of them would be copied there and how much.
    """
    if cluster is not None:
        _plan_remote(cluster, kwargs)
        return
    p = _load_plan(**kwargs)
    _print_plan(p)
    _print_memory(p, kwargs.get("gpu_mem"))


def _print_memory(p, gpu_mem: float | None) -> None:
    from hpcft.plan import memory

    click.secho("# --- memory planner (GPU: DeepSpeed's model-state estimators; CPU with offload: host per rank "
                "× ranks; activations extra) ---", bold=True)  # fmt: skip
    try:
        table = memory.planner_table(p.spec, gpu_mem)
    except HpcftError as e:
        click.echo(f"skipped: {e}")
        return
    _console().print(table)
    host = memory.job_host_memory(p.spec, p.files.get("ds_config.json"))
    if host:
        click.secho(f"# host memory per rank with this job's offload: {memory.fmt_bytes(host.total)}", bold=True)
        for part, size in host.parts.items():
            click.echo(f"  {memory.fmt_bytes(size):>10}  {part}")


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
    _print_lemons(p.spec)


def _print_lemons(spec) -> None:
    import time
    from pathlib import Path

    from hpcft.rundir import lemons

    runs = Path(spec.run.runs_dir)
    found = lemons.lemons(lemons.read_incidents(runs), time.time())
    if found:
        click.secho("# --- lemon nodes ---", bold=True)
        avoid = "excluded at submission and requeue where the partition can spare them" if spec.run.avoid_lemons \
            else "kept (run.avoid_lemons: false)"  # fmt: skip
        click.echo(f"{', '.join(found)}: named by recent faults in {runs} ({avoid}; `hpcft nodes` lists why)")


@main.command()
@job_options
@click.option("--dry-run", is_flag=True, help="print the plan and stop (same as `hpcft plan`)")
@click.option("--wait", is_flag=True, help="return when the job ends, with its exit status")
@click.option("--no-submit", is_flag=True, help="write the run directory and job.sbatch; you sbatch it yourself")
@click.option(
    "--prepare",
    "prepare_data",
    is_flag=True,
    help="tokenize the data in a CPU job first; training starts after it succeeded (afterok)",
)
@click.option("--prepare-partition", metavar="PARTITION", help="--prepare: the CPU job's partition")
@cluster_option
@click.option("--intent", hidden=True, help="submit at most once per this id (a submission from a workstation)")
@env_from_stdin_option
@_handle_errors
def submit(dry_run: bool, wait: bool, no_submit: bool, prepare_data: bool, prepare_partition: str | None,
           cluster, intent: str | None, **kwargs) -> None:  # fmt: skip
    """Submit a fine-tuning job described by JOB_FILE.

    \b
    Examples:
      hpcft submit job.yaml --nodes 4 --gpus-per-node 8 --time 12:00:00
      hpcft submit job.yaml -o train.lr=1e-4 -o train.max_steps=500
      hpcft submit job.yaml --nodes 2 --no-submit      # write job.sbatch; sbatch it yourself

    \b
    Your own trainer after `--` (a .py file, -m module, or a program), run under every launcher:
      hpcft submit job.yaml --nodes 2 -- my_train.py --epochs 3
      hpcft submit job.yaml --nodes 2 --zero 3 -- train.py --deepspeed {ds_config} --output_dir {output_dir}
      hpcft submit job.yaml --nodes 2 -- -m trl.scripts.sft --config sft.yaml --output_dir {output_dir}
      hpcft submit job.yaml --nodes 2 --launcher none -- llamafactory-cli train cfg.yaml
      hpcft submit job.yaml --nodes 2 --launcher none -- trl sft --accelerate_config {accelerate_config} ...
    Placeholders, filled in on each node: {run_dir} {ds_config} {accelerate_config} {output_dir}
    {resume_checkpoint} (empty when starting fresh) {node_rank} {nnodes}; also as HPCFT_* variables.
    `--launcher none` runs the command once per node for tools that start their own workers (trl's
    and llamafactory-cli's console commands): under torchrun they would start a launcher in every rank.

    \b
    From a workstation (`hpcft clusters` names them; files the job names are copied there first):
      hpcft submit job.yaml --cluster mycluster --nodes 2 --wait
    """
    from hpcft.backends import actions as backends

    switches = {"dry_run": dry_run, "no_submit": no_submit, "prepare_data": prepare_data,
                "prepare_partition": prepare_partition}  # fmt: skip
    if _submitted_elsewhere(cluster, intent, switches, wait, kwargs):
        return
    p = _load_plan(**kwargs)
    if dry_run:
        _print_plan(p)
        return
    if no_submit:
        run = backends.write_only(p)
        click.echo(f"wrote {run.name}: read or edit {run / 'job.sbatch'}, then submit it yourself:")
        click.echo(f"  sbatch {run / 'job.sbatch'}")
        click.echo(f"  then:  hpcft status {run.name}   |   hpcft logs {run.name} -f")
        return
    if prepare_data:
        from hpcft.backends import prepare
        from hpcft.plan.prepare import PrepareOptions

        run, prep, job_id = prepare.submit_with_training(p, PrepareOptions(partition=prepare_partition))
        click.echo(f"submitted data preparation of {run.name} as job {prep}; training waits for it (afterok)")
    else:
        run, job_id = backends.submit(p)
    click.echo(f"submitted {run.name} as job {job_id} ({p.backend})")
    click.echo(f"  run dir: {run}")
    click.echo(f"  watch:   hpcft status {run.name}   |   hpcft logs {run.name} -f")
    if wait:
        sys.exit(_wait(run))


def _submitted_elsewhere(cluster, intent: str | None, switches: dict, wait: bool, kwargs: dict) -> bool:
    """``submit --cluster`` (from a workstation: exits) or ``--intent`` (its cluster side); False for a plain submit."""
    if cluster is not None:
        sys.exit(_submit_remote(cluster, kwargs, switches, wait))
    if intent is None:
        return False
    if any(switches[k] for k in ("prepare_data", "no_submit", "dry_run")):
        raise click.UsageError("--intent submits one job: not with --prepare, --no-submit or --dry-run")
    _submit_once(intent, kwargs)
    return True


def _submit_once(intent: str, kwargs: dict) -> None:
    """The cluster side of a workstation's submission: at most one job per intent (``rundir.intents``)."""
    import json

    from hpcft.backends import actions as backends
    from hpcft.remote.submit import ANSWER_PREFIX
    from hpcft.rundir import intents

    run, job_id, again = backends.submit_once(lambda run_dir: _load_plan(**kwargs, run_dir=run_dir),
                                              intents.check_id(intent))  # fmt: skip
    if again:
        click.echo(f"{run.name} was submitted as job {job_id} by an earlier try of this submission; nothing new "
                   "was submitted")  # fmt: skip
    else:
        click.echo(f"submitted {run.name} as job {job_id}")
    click.echo(f"  run dir: {run}")
    click.echo(ANSWER_PREFIX + json.dumps({"run": run.name, "job": job_id, "again": again}))


def staged(cluster, kwargs: dict, overrides=None):
    """The job's staging plan for ``cluster`` (``hpcft.remote.stage``) and its curated flags, from ``job_options``'
    values (``overrides``: instead of ``kwargs``' own, as a sweep's fixed ones)."""
    from hpcft.remote import submit as remote

    sp = remote.stage_plan(cluster, kwargs["job_file"], kwargs["overrides"] if overrides is None else overrides,
                           kwargs["command"], kwargs["profile"], kwargs["accelerate_config"])  # fmt: skip
    return sp, {name: kwargs.get(name) for name in remote.FLAG_OPTIONS}


def _submit_remote(cluster, kwargs: dict, switches: dict, wait: bool) -> int:
    """Copy the job's local files to ``cluster`` and submit there once (``hpcft.remote.submit``); the exit status."""
    from hpcft.remote import forward
    from hpcft.remote import submit as remote

    sp, flags = staged(cluster, kwargs)
    answer = remote.submit(cluster, sp, flags, switches, click.echo)
    if answer is None:
        return 0
    run = answer["run"]
    click.echo(f"  from here: hpcft status {run} --cluster {cluster.name}   |   hpcft logs {run} -f --cluster "
               f"{cluster.name}")  # fmt: skip
    return forward.run_here(cluster, "wait", [run], reconnect=True) if wait else 0


def _plan_remote(cluster, kwargs: dict) -> None:
    """``plan --cluster``: what would be copied and how much; the cluster's own plan once everything is there."""
    from hpcft.remote import forward, stage
    from hpcft.remote import submit as remote

    sp, flags = staged(cluster, kwargs)
    present = remote.on_cluster(cluster, sp)
    click.secho(f"# --- files the job names, staged in {cluster.name}:{sp.staging} ---", bold=True)
    missing = 0
    for item in sp.unique_items():
        there = item.key in present
        missing += 0 if there else item.size
        click.echo(f"  {'already there' if there else 'would copy':>13}  {_size(item.size):>10}  {item.local}  "
                   f"({item.what})")  # fmt: skip
    for what, path in sp.referenced:
        click.echo(f"  {'on cluster':>13}  {'':>10}  {path}  ({what}: not here, taken as the cluster's)")
    click.echo(f"  total to copy: {_size(missing)}")
    argv = remote.remote_argv(cluster, sp, flags, {"dry_run": True}, None)
    if missing or sp.job_key not in present:
        click.echo(f"the cluster's plan needs these files there: `hpcft submit {kwargs['job_file']} --cluster "
                   f"{cluster.name} --dry-run ...` copies them and prints it")  # fmt: skip
        return
    # what the submission would take from here: checked alike, handed to the cluster's plan alike
    argv, stdin = forward.with_secrets(argv, stage.values_here(sp.passthrough))
    sys.exit(forward.ssh.stream(cluster, argv, env=forward.remote_env(cluster), input=stdin))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _progress_printer():
    """A ``wait_for`` callback printing state, step and loss to stderr when they change."""
    last = [None]

    def show(st) -> None:
        line = f"{st.state} step {st.step if st.step is not None else '-'}/{st.total_steps or '?'}"
        if st.loss is not None:
            line += f" loss {st.loss:.4f}"
        if line != last[0]:
            click.echo(f"  [{time.strftime('%H:%M:%S')}] {line}", err=True)
            last[0] = line

    return show


def _wait(run: Path) -> int:
    from hpcft.ops import status as monitor

    final = monitor.wait_for(run, _progress_printer())
    ok = final.state == "COMPLETED"
    click.secho(f"{run.name}: {final.state}", fg="green" if ok else "red")
    if final.state == "UNKNOWN":
        click.echo(f"  neither squeue nor sacct knows job {final.job_id} any more: no accounting on this cluster? "
                   f"The run's files tell the rest: hpcft logs {run.name}", err=True)  # fmt: skip
    return 0 if ok else 1


@main.command("prepare")
@job_options
@click.option("--cpus", type=click.IntRange(min=1), default=8, show_default=True, help="CPUs of the prepare job")
@click.option("--prepare-time", "prep_time", default="2:00:00", show_default=True, help="its time limit")
@click.option("--mem", help="its memory, sbatch format (e.g. 32G)")
@_handle_errors
def prepare_cmd(cpus: int, prep_time: str, mem: str | None, **kwargs) -> None:
    """Tokenize and pack JOB_FILE's data into the shared cache in a CPU job of its own.

    
    A later `hpcft submit JOB_FILE` finds the cache ready and its ranks skip the step, instead of
    tokenizing inside the GPU job while every other rank waits. --partition picks the CPU partition:
      hpcft prepare job.yaml --partition cpu --cpus 32
      hpcft submit job.yaml --nodes 8 --prepare --prepare-partition cpu   # the same, then training (afterok)
    """
    from hpcft.backends import prepare
    from hpcft.plan.prepare import PrepareOptions

    if kwargs.get("backend") is None:
        kwargs["backend"] = "sbatch"
    p = _load_plan(**kwargs)
    where, job_id = prepare.submit_alone(p, PrepareOptions(partition=p.spec.resources.partition, cpus=cpus,
                                                           time=prep_time, mem=mem))  # fmt: skip
    click.echo(f"submitted data preparation as job {job_id}; log: {where / 'logs' / f'prepare-{job_id}.out'}")


@main.command("init-demo")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--hidden-size", default=128, show_default=True, help="model width (512 gives ~8M parameters)")
@click.option("--moe", is_flag=True, help="a tiny Mixtral-architecture mixture-of-experts model instead")
@_handle_errors
def init_demo(directory: str, hidden_size: int, moe: bool) -> None:
    """Build a tiny Llama (or Mixtral) model, a tokenizer, a dataset and DIRECTORY/job.yaml.

    Everything is made locally (no model hub). Then: hpcft submit DIRECTORY/job.yaml --wait
    """
    from hpcft.train.demo import build_demo

    job = build_demo(Path(directory), hidden_size=hidden_size, moe=moe)
    click.echo(f"wrote {job}\nnext: hpcft submit {job} --wait")
