"""Commands that run on the cluster as they are typed here: the remote hpcft gets the same argv, minus
``--cluster``, with the cluster's runs directory as ``$HPCFT_RUNS_DIR`` (a ``--runs-dir`` given names a
directory on the cluster and wins, as it does there)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.remote import ssh
from hpcft.remote.clusters import ENV_VAR, Cluster

RECONNECTS = 5  # `logs -f` and `wait`: how often a dropped connection is opened again
RECONNECT_S = 3.0


def strip_cluster(args: Sequence[str]) -> list[str]:
    """A command's argv without ``--cluster NAME`` / ``--cluster=NAME`` (up to a ``--``: the user's command's own)."""
    out, i = [], 0
    args = list(args)
    while i < len(args):
        word = args[i]
        if word == "--":
            out += args[i:]
            break
        if word == "--cluster":
            i += 2
            continue
        if word.startswith("--cluster="):
            i += 1
            continue
        out.append(word)
        i += 1
    return out


def remote_env(cluster: Cluster) -> dict[str, str]:
    """What every remote hpcft command gets: the cluster's runs directory; never a cluster of its own."""
    return {"HPCFT_RUNS_DIR": cluster.runs_dir, ENV_VAR: "local"}


def with_secrets(argv: Sequence[str], secrets: Mapping[str, str]) -> tuple[list[str], bytes | None]:
    """``argv`` (``hpcft COMMAND ...`` on the cluster) taking ``secrets`` — the job's ``launch.env_passthrough``
    values from this shell — and the stdin that carries them: by name on the command line (``--env-from-stdin``),
    values on stdin, never in a file, an argv or a log."""
    import json

    if not secrets:
        return list(argv), None
    return [*argv[:2], "--env-from-stdin", *argv[2:]], json.dumps(dict(secrets)).encode()


def run_here(cluster: Cluster, command: str, args: Sequence[str], *, reconnect: bool = False) -> int:
    """``hpcft COMMAND ARGS`` on the cluster with its output here; its exit status. ``reconnect``: a command that
    only reads (``logs -f``, ``wait``) is started again when the connection drops."""
    argv = [cluster.hpcft, command, *strip_cluster(args)]
    tries = RECONNECTS if reconnect else 1
    seen = [0]  # lines shown: a reconnected `logs -f` starts from the top again, and they are not shown twice
    for attempt in range(1, tries + 1):
        try:
            return ssh.stream(cluster, argv, env=remote_env(cluster), skip=seen[0], seen=seen)
        except ssh.ConnectionLost as e:
            if attempt == tries:
                raise
            print(f"hpcft: {e.message}; connecting again ({attempt}/{tries - 1})", file=sys.stderr, flush=True)
            time.sleep(RECONNECT_S)
    return 1


def fetch_file(cluster: Cluster, remote: str, local: Path) -> int:
    """Bring one file from the cluster (``cat`` over the shared connection); its size."""
    proc = ssh.run(cluster, ["cat", "--", remote], timeout=300)
    if proc.returncode != 0:
        raise HpcftError(f"cannot read {cluster.name}:{remote}: {proc.stderr.decode(errors='replace').strip()}")
    from hpcft.rundir.store import write_atomic

    local.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(local, proc.stdout)
    return len(proc.stdout)


def plot(cluster: Cluster, run: str, runs_dir: str | None, out: str | None) -> str:
    """``hpcft plot`` on the cluster into a file of its own, brought back here (default ``./RUN.png``)."""
    remote = f"/tmp/hpcft-plot-{os.getpid()}-{int(time.time())}.png"
    argv = [cluster.hpcft, "plot", run, "--out", remote, *(["--runs-dir", runs_dir] if runs_dir else [])]
    proc = ssh.run(cluster, argv, env=remote_env(cluster), timeout=600)
    if proc.returncode != 0:
        raise HpcftError(proc.stderr.decode(errors="replace").strip().removeprefix("error: ") or "plot failed")
    local = Path(out) if out else Path(f"{Path(run).name}.png")
    try:
        size = fetch_file(cluster, remote, local)
    finally:
        with contextlib.suppress(HpcftError):
            ssh.run(cluster, ["rm", "-f", "--", remote], timeout=60)
    line = proc.stdout.decode(errors="replace").strip().splitlines()[-1:]
    counts = line[0].split("(", 1)[1].removesuffix(")") if line and "(" in line[0] else ""
    return f"wrote {local} ({size} bytes from {cluster.name}{'; ' + counts if counts else ''})"


def describe(cluster: Cluster, argv: Sequence[str]) -> str:
    """The remote command line as the user could type it on the login node (for --help texts and errors)."""
    return f"ssh {cluster.host} {shlex.join([cluster.hpcft, *argv])}"


def resume(cluster: Cluster, run: str, runs_dir: str | None, args: Sequence[str]) -> int:
    """``hpcft resume`` on the cluster, with the run's ``launch.env_passthrough`` values from this shell on its stdin
    (the names from the run's spec.yaml there, or an ``-o`` of this command): the new job takes them from here,
    as the submission did. Its exit status."""
    import yaml

    from hpcft.remote import stage

    folder = run if "/" in run else f"{runs_dir or cluster.runs_dir}/{run}"
    proc = ssh.run(cluster, ["cat", "--", f"{folder}/spec.yaml"], timeout=120)
    try:
        spec = yaml.safe_load(proc.stdout) if proc.returncode == 0 else {}
    except yaml.YAMLError:
        spec = {}
    overrides = [args[i + 1] if word == "-o" else word[2:] for i, word in enumerate(args)
                 if (word == "-o" and i + 1 < len(args)) or (word.startswith("-o") and len(word) > 2)]  # fmt: skip
    secrets = stage.values_here(stage.passthrough_names(spec if isinstance(spec, dict) else {}, overrides))
    argv, stdin = with_secrets([cluster.hpcft, "resume", *strip_cluster(args)], secrets)
    return ssh.stream(cluster, argv, env=remote_env(cluster), input=stdin)
