"""The only caller of ``ssh`` and ``rsync``: one multiplexed connection per cluster, argv quoted once.

Every remote command is a list of words; ``remote_command`` quotes each once (POSIX shell quoting, the login
shell on the cluster reads it) — nothing else in hpcft builds a remote shell line. ssh's own options come
from the user's ``~/.ssh/config`` and the cluster's ``ssh_options``; hpcft adds connection sharing
(ControlMaster: the first command opens the connection, the next ones reuse it for ``ControlPersist``
seconds, so a key passphrase or a password is asked at most once) and keep-alives.

ssh exits 255 when the connection failed or dropped: that is a ``ConnectionLost``, which callers may
retry; any other exit status is the remote command's own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.remote.clusters import Cluster

CONNECTION_LOST = 255  # ssh's exit status for its own errors
CONTROL_PERSIST_S = 300
_STATS_SENT = re.compile(r"^Total bytes sent:\s*([\d,.]+)", re.MULTILINE)


class ConnectionLost(HpcftError):
    """ssh could not reach the cluster, or the connection dropped mid-command."""


def control_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the shared connections' sockets live (0700): ``$XDG_RUNTIME_DIR/hpcft-ssh``, else a folder in /tmp
    of this user's (a socket path must stay under ~100 bytes, so never deep in a home directory)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_RUNTIME_DIR")
    return Path(base) / "hpcft-ssh" if base else Path(f"/tmp/hpcft-ssh-{os.getuid()}")


def ssh_argv(cluster: Cluster, *, control: Path | None = None) -> list[str]:
    """``ssh`` with the cluster's options and connection sharing, up to (not including) the host."""
    control = control or control_dir()
    argv = ["ssh", "-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C",
            "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=20"]  # fmt: skip
    for name, value in cluster.ssh_options.items():
        argv += ["-o", f"{name}={os.path.expanduser(value) if name.endswith('File') else value}"]
    return argv


def quote_word(word: str) -> str:
    """One word for the remote POSIX shell; a leading ``~/`` stays the remote home (``$HOME``)."""
    if word.startswith("~/"):
        return '"$HOME"/' + shlex.quote(word[2:])
    return shlex.quote(word)


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The one remote shell line for ``argv``, with ``env`` set for it (``env NAME=VALUE ... argv``)."""
    words = [quote_word(w) for w in argv]
    if env:
        words = ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), *words]
    return " ".join(words)


def _ssh(cluster: Cluster) -> list[str]:
    """``ssh_argv`` with its socket folder made (0700)."""
    control = control_dir()
    control.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ssh_argv(cluster, control=control)


def _prepare(cluster: Cluster, argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    return [*_ssh(cluster), cluster.host, "--", remote_command(argv, {**cluster.env, **(env or {})})]


def _lost(cluster: Cluster, stderr: str) -> ConnectionLost:
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "the connection closed"
    hint = f"check `ssh {cluster.host}` works from this shell; `hpcft clusters` checks each"
    return ConnectionLost(f"cannot reach cluster {cluster.name} ({cluster.host}): {detail}", hint=hint)


def run(cluster: Cluster, argv: Sequence[str], *, env: Mapping[str, str] | None = None, input: bytes | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``argv`` on the cluster and capture its output (bytes); ``ConnectionLost`` when ssh failed."""
    full = _prepare(cluster, argv, env)
    try:
        proc = subprocess.run(full, input=input if input is not None else b"", capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise HpcftError("ssh is not installed here", hint="install the OpenSSH client") from None
    except subprocess.TimeoutExpired:
        raise ConnectionLost(f"cluster {cluster.name} did not answer within {timeout:.0f} s") from None
    if proc.returncode == CONNECTION_LOST:
        raise _lost(cluster, proc.stderr.decode(errors="replace"))
    return proc


def stream(cluster: Cluster, argv: Sequence[str], *, env: Mapping[str, str] | None = None, skip: int = 0,
           seen: list[int] | None = None, input: bytes | None = None) -> int:  # fmt: skip
    """Run ``argv`` on the cluster with its output on this terminal (``logs -f``); its exit status.

    Output passes through line by line as it comes (stderr untouched: progress); the first ``skip`` lines of
    stdout are not shown again (what an earlier, dropped connection showed), and ``seen[0]`` counts the lines
    so far; ``input`` goes to the remote command's stdin. ssh's own exit status 255 is a ``ConnectionLost``
    (ssh has printed why).
    """
    full = _prepare(cluster, argv, env)
    count = 0
    try:
        proc = subprocess.Popen(full, stdin=subprocess.PIPE if input else subprocess.DEVNULL, stdout=subprocess.PIPE)
        if input:
            proc.stdin.write(input)
            proc.stdin.close()
        for line in proc.stdout:
            count += 1
            if seen is not None:
                seen[0] = max(seen[0], count)
            if count > skip:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
        returncode = proc.wait()
    except FileNotFoundError:
        raise HpcftError("ssh is not installed here", hint="install the OpenSSH client") from None
    except KeyboardInterrupt:
        return 130
    if returncode == CONNECTION_LOST:
        raise _lost(cluster, "")
    return returncode


def rsync(cluster: Cluster, local: Path, remote: str) -> int:
    """Copy ``local`` (a file, or a directory's contents) to the cluster path ``remote``; the bytes sent.

    ``--protect-args``: the remote path reaches rsync on the cluster as it is, no shell reads it.
    """
    source = f"{local}/" if local.is_dir() else str(local)
    argv = ["rsync", "-a", "--protect-args", "--stats", "-e", shlex.join(_ssh(cluster)),
            source, f"{cluster.host}:{remote}"]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise HpcftError("rsync is not installed here", hint="install rsync (it copies job inputs)") from None
    if proc.returncode != 0:
        if proc.returncode in (12, 255) or "connection" in proc.stderr.lower():
            raise _lost(cluster, proc.stderr)
        raise HpcftError(f"copying {local} to {cluster.name}:{remote} failed: {proc.stderr.strip()}",
                         hint="is rsync installed on the cluster, and the staging directory writable?")  # fmt: skip
    return bytes_sent(proc.stdout)


def bytes_sent(stats: str) -> int:
    """``rsync --stats`` output → its "Total bytes sent" (0 when absent)."""
    m = _STATS_SENT.search(stats)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else 0


def close(cluster: Cluster) -> None:
    """End the shared connection now (``ssh -O exit``); nothing when none is open."""
    subprocess.run([*ssh_argv(cluster), "-O", "exit", cluster.host], capture_output=True, check=False)
