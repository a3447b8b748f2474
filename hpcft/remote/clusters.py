"""The user's clusters by name: ``$XDG_CONFIG_HOME/hpcft/clusters.yaml`` (default ``~/.config/hpcft``).

::

    default: lab                      # used when neither --cluster nor $HPCFT_CLUSTER names one
    clusters:
      lab:
        host: me@login.example.org    # anything ssh accepts: ~/.ssh/config aliases, ProxyJump, keys, agents
        runs_dir: /scratch/me/hpcft-runs
        hpcft: /home/me/venv/bin/hpcft  # the hpcft to run there [default: hpcft on the login shell's PATH]
        profile: /shared/profiles/lab.yaml   # a cluster profile on the cluster (hpcft submit --profile)
        staging: /scratch/me/.hpcft-staging  # where job inputs are copied [default: RUNS_DIR/.staging]
        ssh_options: {IdentityFile: ~/.ssh/lab}  # extra `ssh -o NAME=VALUE`
        env: {SLURM_CONF: /etc/slurm/slurm.conf}  # set for every remote command

Reading is pure (``parse``); ``load`` reads the file and ``save`` writes it atomically. A damaged file is a
``ConfigError`` naming the file and the key, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from hpcft.errors import ConfigError, HpcftError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OPTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a remote value may hold: it reaches a remote shell, quoted once by hpcft.remote.ssh, but a newline or NUL
# in a path or host is a mistake, not a name.
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = ("host", "runs_dir", "hpcft", "profile", "staging", "ssh_options", "env")
ENV_VAR = "HPCFT_CLUSTER"


@dataclass(frozen=True)
class Cluster:
    """One named cluster: how to reach it and where hpcft keeps its runs there."""

    name: str
    host: str
    runs_dir: str
    hpcft: str = "hpcft"
    profile: str | None = None
    staging: str | None = None
    ssh_options: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def staging_dir(self) -> str:
        """Where job inputs are copied on the cluster."""
        return self.staging or str(PurePosixPath(self.runs_dir) / ".staging")

    def to_yaml(self) -> dict[str, Any]:
        """This cluster as its entry in clusters.yaml (unset fields left out)."""
        out: dict[str, Any] = {"host": self.host, "runs_dir": self.runs_dir, "hpcft": self.hpcft}
        for key in ("profile", "staging"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.ssh_options:
            out["ssh_options"] = dict(self.ssh_options)
        if self.env:
            out["env"] = dict(self.env)
        return out


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/hpcft/clusters.yaml``, default ``~/.config/hpcft/clusters.yaml``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hpcft" / "clusters.yaml"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/hpcft`` (default ``~/.local/state/hpcft``): what this side remembers of remote runs."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")) / "hpcft"


def _text(where: str, value: Any, problems: list[str], *, absolute: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: expected a non-empty string, got {value!r}")
        return None
    if _BAD_CHARS.search(value):
        problems.append(f"{where}: {value!r} holds a control character (a newline?)")
        return None
    if absolute and not value.startswith("/"):
        problems.append(f"{where}: {value!r} must be an absolute path on the cluster (HINT: e.g. /scratch/$USER/...)")
        return None
    return value


def _mapping(where: str, value: Any, key_re: re.Pattern, what: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping of {what} to values, got {type(value).__name__}")
        return {}
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key_re.fullmatch(key):
            problems.append(f"{where}: {key!r} is not a valid {what}")
            continue
        text = _text(f"{where}.{key}", str(item) if isinstance(item, (int, float, bool)) else item, problems)
        if text is not None:
            out[key] = text
    return out


def parse_cluster(name: str, data: Any, source: str = "clusters.yaml") -> Cluster:
    """One entry of ``clusters:``; every problem at once (``ConfigError``)."""
    problems: list[str] = []
    where = f"clusters.{name}"
    if not NAME_RE.fullmatch(name):
        problems.append(f"{where}: a cluster name is letters, digits, '.', '_' or '-' (at most 64)")
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: expected a mapping (host, runs_dir, ...), got {type(data).__name__}"], source)
    for key in data:
        if key not in FIELDS:
            problems.append(f"{where}.{key}: unknown key (known: {', '.join(FIELDS)})")
    host = _text(f"{where}.host", data.get("host"), problems)
    if host is None and "host" not in data:
        problems.append(f"{where}.host: required (what you would give ssh, e.g. me@login.example.org)")
    elif host is not None and (host.startswith("-") or " " in host):
        problems.append(f"{where}.host: {host!r} is not a host ssh can be given (HINT: an alias from ~/.ssh/config)")
    runs_dir = _text(f"{where}.runs_dir", data.get("runs_dir"), problems, absolute=True)
    if runs_dir is None and "runs_dir" not in data:
        problems.append(f"{where}.runs_dir: required (the runs directory on the cluster's shared filesystem)")
    hpcft = _text(f"{where}.hpcft", data.get("hpcft", "hpcft"), problems)
    profile = _text(f"{where}.profile", data.get("profile"), problems, absolute=True)
    staging = _text(f"{where}.staging", data.get("staging"), problems, absolute=True)
    ssh_options = _mapping(f"{where}.ssh_options", data.get("ssh_options"), _OPTION_RE, "ssh option name", problems)
    env = _mapping(f"{where}.env", data.get("env"), _ENV_RE, "environment variable name", problems)
    if problems:
        raise ConfigError(problems, source)
    return Cluster(name=name, host=host or "", runs_dir=runs_dir or "", hpcft=hpcft or "hpcft", profile=profile,
                   staging=staging, ssh_options=ssh_options, env=env)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """The whole file: the clusters by name and the default one."""

    clusters: Mapping[str, Cluster]
    default: str | None = None


def parse(text: str, source: str = "clusters.yaml") -> Config:
    """The config file's text → ``Config``; a damaged file is a ``ConfigError``."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping (default, clusters) at the top, got {type(data).__name__}"], source)
    problems = [f"{key}: unknown key (known: default, clusters)" for key in data if key not in ("default", "clusters")]
    entries = data.get("clusters") or {}
    if not isinstance(entries, dict):
        raise ConfigError([f"clusters: expected a mapping of names to clusters, got {type(entries).__name__}"], source)
    clusters = {}
    for name, entry in entries.items():
        try:
            clusters[str(name)] = parse_cluster(str(name), entry, source)
        except ConfigError as e:
            problems += e.problems
    default = data.get("default")
    if default is not None and (not isinstance(default, str) or default not in clusters):
        problems.append(f"default: {default!r} names no cluster of this file ({', '.join(clusters) or 'none'})")
    if problems:
        raise ConfigError(problems, source)
    return Config(clusters=clusters, default=default)


def load(path: Path | None = None) -> Config:
    """The user's config (an absent file is no clusters)."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(clusters={})
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read it: {getattr(e, 'strerror', None) or e}"], str(path)) from None
    return parse(text, str(path))


def save(config: Config, path: Path | None = None) -> Path:
    """Write ``config`` atomically (0600: it may name keys)."""
    from hpcft.rundir.store import write_atomic

    path = path or config_path()
    data: dict[str, Any] = {}
    if config.default:
        data["default"] = config.default
    data["clusters"] = {name: c.to_yaml() for name, c in config.clusters.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "# hpcft's clusters (`hpcft clusters --help`)\n" + yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def chosen(name: str | None, config: Config, environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster a command runs on: ``--cluster``, else ``$HPCFT_CLUSTER``; None for this machine.

    The file's ``default`` is not applied here: a command without either runs where it is typed, as it always
    did; ``hpcft clusters`` shows the default for ``--cluster default``.
    """
    env = os.environ if environ is None else environ
    name = name or env.get(ENV_VAR) or None
    if name is None or name == "local":
        return None
    if name == "default" and config.default:
        name = config.default
    if name not in config.clusters:
        known = ", ".join(config.clusters) or "none yet"
        raise HpcftError(f"no cluster named {name!r} in {config_path(environ)} (known: {known})",
                         hint="hpcft clusters add NAME --host HOST --runs-dir DIR")  # fmt: skip
    return config.clusters[name]


def runs_by_cluster() -> dict[str, list[str]]:
    """The runs submitted to each cluster from here (``runs.jsonl``), oldest first; a run resubmitted by a retry
    counts once."""
    found: dict[str, list[str]] = {}
    try:
        lines = (state_dir() / "runs.jsonl").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            cluster, run = str(entry["cluster"]), str(entry["run"])
        except (ValueError, KeyError, TypeError):
            continue
        if run not in found.setdefault(cluster, []):
            found[cluster].append(run)
    return found
