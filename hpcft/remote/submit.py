"""Submit from a workstation: copy what the job names, then one remote ``hpcft submit`` that happens once.

1. ``stage.plan_stage``: the local inputs, their content keys, the rewritten job file.
2. A pending intent here (``$XDG_STATE_HOME/hpcft/intents/``), keyed by what is submitted: running the same
   command again after a dropped connection finds it and resumes that submission (same intent id); once the
   cluster answered, the record is moved to ``runs.jsonl`` and the next identical command is a new run.
3. The copy: one listing of the staging area, rsync of what is missing (into a temporary name, renamed when
   complete: a copy cut off half-way is never taken for a whole one).
4. ``hpcft submit STAGED_JOB --intent ID`` on the cluster (its journal: ``hpcft.rundir.intents``); a dropped
   connection is retried with the same id, and reported with the command that resumes it if it stays down.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hpcft.errors import HpcftError
from hpcft.remote import forward, ssh, stage
from hpcft.remote.clusters import Cluster, state_dir

ANSWER_PREFIX = "@hpcft-submitted "  # the remote submit's last line: its answer as JSON
TRIES = 3
RETRY_S = 2.0

# submit's curated flags → their option on the remote command line (paths staged separately)
FLAG_OPTIONS = {
    "nodes": "--nodes",
    "gpus_per_node": "--gpus-per-node",
    "zero": "--zero",
    "gpu_mem": "--gpu-mem",
    "offload": "--offload",
    "launcher": "--launcher",
    "backend": "--backend",
    "time_limit": "--time",
    "partition": "--partition",
    "runs_dir": "--runs-dir",
}
SWITCHES = {"no_submit": "--no-submit", "prepare_data": "--prepare", "dry_run": "--dry-run"}


@dataclass
class Copied:
    """What a staging pass did."""

    items: int = 0
    already: int = 0
    bytes_sent: int = 0


def stage_plan(cluster: Cluster, job_file: str, overrides, command, profile, accelerate_config) -> stage.StagePlan:
    """What to copy for this job (the cluster's profile unless one is given)."""
    return stage.plan_stage(job_file, staging=cluster.staging_dir, overrides=overrides, command=command,
                            profile=profile or cluster.profile, accelerate_config=accelerate_config)  # fmt: skip


def on_cluster(cluster: Cluster, sp: stage.StagePlan) -> set[str]:
    """The content keys already in the cluster's staging area (created if missing)."""
    script = 'mkdir -p -- "$1" && ls -1 -- "$1"'
    proc = ssh.run(cluster, ["sh", "-c", script, "sh", sp.staging], timeout=120)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip()
        hint = "set `staging:` of the cluster to a writable directory (hpcft clusters add --replace)"
        raise HpcftError(f"cannot use the staging area {cluster.name}:{sp.staging}: {why}", hint=hint)
    return set(proc.stdout.decode(errors="replace").split())


def copy(cluster: Cluster, sp: stage.StagePlan, present: set[str] | None = None) -> Copied:
    """Put every staged input and the job file on the cluster; what was sent."""
    import tempfile

    present = on_cluster(cluster, sp) if present is None else present
    done = Copied()
    moves: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hpcft-stage-") as tmp:
        job = Path(tmp) / stage.JOB_NAME
        job.write_text(sp.job_text)
        todo = [(i.key, i.local, i.local.name) for i in sp.unique_items()] + [(sp.job_key, job, stage.JOB_NAME)]
        for key, local, name in todo:
            if key in present:
                done.already += 1
                continue
            incoming = f".incoming-{key}-{uuid.uuid4().hex[:8]}"
            target = str(PurePosixPath(sp.staging) / incoming / name)
            ssh.run(cluster, ["mkdir", "-p", "--", str(PurePosixPath(sp.staging) / incoming)], timeout=120)
            done.bytes_sent += ssh.rsync(cluster, local, target)
            done.items += 1
            moves += [incoming, key]
    if moves:
        # A complete copy is renamed to its key; a key that appeared meanwhile (another submit) keeps its copy.
        script = (
            'cd -- "$1" && shift && while [ $# -gt 0 ]; do '
            'mv -T -- "$1" "$2" 2>/dev/null || rm -rf -- "$1"; shift 2; done'
        )
        proc = ssh.run(cluster, ["sh", "-c", script, "sh", sp.staging, *moves], timeout=300)
        if proc.returncode != 0:
            raise HpcftError(f"cannot finish the copy in {cluster.name}:{sp.staging}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")  # fmt: skip
    return done


def remote_argv(cluster: Cluster, sp: stage.StagePlan, flags: dict, switches: dict, intent: str | None,
                command: str = "submit") -> list[str]:  # fmt: skip
    """The remote ``hpcft submit`` (or ``sweep``) for the staged job; ``switches``: ``SWITCHES`` and
    ``prepare_partition``, ``max_parallel``."""
    argv = [cluster.hpcft, command, sp.job_remote]
    for name, option in FLAG_OPTIONS.items():
        if flags.get(name) is not None:
            argv += [option, str(flags[name])]
    if sp.profile:
        argv += ["--profile", sp.profile]
    if sp.accelerate_config:
        argv += ["--accelerate-config", sp.accelerate_config]
    for item in sp.overrides:
        argv += ["-o", item]
    for name, option in SWITCHES.items():
        if switches.get(name):
            argv.append(option)
    if switches.get("prepare_partition"):
        argv += ["--prepare-partition", switches["prepare_partition"]]
    if switches.get("max_parallel"):
        argv += ["--max-parallel", str(switches["max_parallel"])]
    if intent:
        argv += ["--intent", intent]
    if sp.command:
        argv += ["--", *sp.command]
    return argv


def run_staged(cluster: Cluster, command: str, job_file: str | None, overrides, profile, argv: list[str], echo) -> int:
    """``hpcft COMMAND [STAGED_JOB] ARGV -o ...`` on the cluster after copying what the job names (``doctor``);
    its exit status. For commands whose repetition is harmless: no intent."""
    from hpcft.remote import check

    check.require(cluster)
    sp = stage_plan(cluster, job_file, overrides, (), profile, None) if job_file else None
    words, profile = [cluster.hpcft, command], profile or cluster.profile
    if sp is not None:
        copied = copy(cluster, sp)
        echo(f"staged the job's files in {cluster.name}:{sp.staging} ({copied.bytes_sent} bytes sent)", err=True)
        words.append(sp.job_remote)
        overrides = sp.overrides
        profile = sp.profile
    words += argv + (["--profile", profile] if profile else [])
    for item in overrides:
        words += ["-o", item]
    return ssh.stream(cluster, words, env=forward.remote_env(cluster))


def _pending_path(cluster: Cluster, argv: list[str]) -> Path:
    """The pending intent of this exact submission (cluster + remote argv, which names the staged contents)."""
    key = hashlib.sha256(json.dumps([cluster.name, cluster.host, argv]).encode()).hexdigest()[:32]
    return state_dir() / "intents" / f"{key}.json"


def pending_intent(cluster: Cluster, argv: list[str]) -> tuple[str, bool]:
    """The intent id of this submission: the one of an unanswered earlier try of it, else a new one (recorded)."""
    from hpcft.rundir.store import write_atomic

    path = _pending_path(cluster, argv)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads(path.read_text())["intent"], True
    intent = uuid.uuid4().hex
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"intent": intent, "cluster": cluster.name, "argv": argv, "at": time.time()}))
    return intent, False


def record_run(cluster: Cluster, answer: dict) -> None:
    """Remember a run submitted to ``cluster`` (``hpcft clusters`` counts them)."""
    path = state_dir() / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"cluster": cluster.name, **answer, "at": time.time()}) + "\n")


def submit(cluster: Cluster, sp: stage.StagePlan, flags: dict, switches: dict, echo,
           command: str = "submit") -> dict | None:  # fmt: skip
    """Copy and submit once; the cluster's answer (``run``, ``job``, ``again``; a sweep's also ``runs``), None for
    ``--no-submit``/``--dry-run``. ``command``: ``submit`` or ``sweep``.

    ``echo(text, err=False)`` prints the remote side's lines here.
    """
    from hpcft.remote import check

    secrets = stage.values_here(sp.passthrough)  # a name not set here: an error before anything is copied
    check.require(cluster)
    copied = copy(cluster, sp)
    echo(f"staged {len(sp.unique_items()) + 1} input(s) in {cluster.name}:{sp.staging}: {copied.items} copied "
         f"({copied.bytes_sent} bytes sent), {copied.already} already there", err=True)  # fmt: skip
    once = not (switches.get("dry_run") or switches.get("no_submit"))
    base_argv = remote_argv(cluster, sp, flags, switches, None, command)
    intent, resumed = pending_intent(cluster, base_argv) if once else (None, False)
    if resumed:
        echo(
            f"resuming an earlier submission of this job to {cluster.name} that got no answer (intent {intent})",
            err=True,
        )  # fmt: skip -- or a refusal: the cluster's journal says which
    argv, stdin = forward.with_secrets(remote_argv(cluster, sp, flags, switches, intent, command), secrets)
    for attempt in range(1, TRIES + 1):
        try:
            proc = ssh.run(cluster, argv, env=forward.remote_env(cluster), timeout=900,
                           input=stdin)  # fmt: skip
            break
        except ssh.ConnectionLost as e:
            if attempt == TRIES:
                raise ssh.ConnectionLost(
                    f"{e.message}\nThe submission may or may not have reached {cluster.name}.",
                    hint="run the same command again: it resumes this submission and never submits it twice",
                ) from None
            echo(f"hpcft: {e.message}; trying again ({attempt}/{TRIES - 1}), same submission", err=True)
            time.sleep(RETRY_S * attempt)
    answer = None
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith(ANSWER_PREFIX):
            answer = json.loads(line[len(ANSWER_PREFIX) :])
        else:
            echo(line)
    err = proc.stderr.decode(errors="replace").rstrip()
    if err:
        echo(err, err=True)
    if proc.returncode != 0 and answer is None:
        # The pending intent stays: whether the cluster's refusal came before or after an sbatch (a journal lock
        # still held, a timed-out sbatch) is only known there; the same command again asks under the same id.
        raise HpcftError(f"the cluster {cluster.name} refused the submission (exit status {proc.returncode})") \
            if not err else _Reported(err)  # fmt: skip
    if answer is not None:
        record_run(cluster, answer)
        with contextlib.suppress(OSError):
            _pending_path(cluster, base_argv).unlink()
    return answer


class _Reported(HpcftError):
    """The remote hpcft already printed what was wrong: nothing more to say here."""

    def __str__(self) -> str:
        return "the submission was refused on the cluster (above)"
