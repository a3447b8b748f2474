"""What a job takes to the cluster: the local files it names, addressed by their content, and its job file
rewritten to name their copies.

A path the job names that exists here is copied to ``STAGING/KEY/NAME`` on the cluster, where KEY is a hash
of its content (a directory's: of every file's relative path, executable bit and bytes): a second submit of
unchanged inputs copies nothing, and two runs never share a copy that changed. A path that does not exist
here is taken for a path on the cluster and left as it is (a 50 GB model already on the cluster's
filesystem is referenced, not copied). Outputs (``run.runs_dir``, ``train.output``, ``train.data.cache_dir``)
are never copied; relative ones would land in the staging area and are refused.

``plan_stage`` decides (reads local files only); ``hpcft.remote.submit`` performs the copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from hpcft.errors import ConfigError

INPUT_KEYS = (
    "train.model",
    "train.tokenizer",
    "train.data.train",
    "train.data.eval",
    "launch.accelerate_config",
    "train.deepspeed_config",
)
OUTPUT_KEYS = ("run.runs_dir", "train.output", "train.data.cache_dir")
KEY_CHARS = 24  # hex digits of the sha256 naming a staged copy
JOB_NAME = "job.yaml"


@dataclass(frozen=True)
class Item:
    """One local path to have on the cluster: its content key, size, and where its copy lives."""

    local: Path
    key: str
    size: int
    remote: str  # STAGING/KEY/NAME
    what: str  # which field or argument named it


@dataclass
class StagePlan:
    """Everything a remote submission copies and the rewritten argv of the remote ``hpcft submit``."""

    staging: str
    items: list[Item] = field(default_factory=list)
    referenced: list[tuple[str, str]] = field(default_factory=list)  # (what, cluster path) left as they are
    job_text: str = ""
    job_key: str = ""
    overrides: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    profile: str | None = None
    accelerate_config: str | None = None
    passthrough: tuple[str, ...] = ()  # launch.env_passthrough: variables the job takes from the submitting shell

    @property
    def job_remote(self) -> str:
        return str(PurePosixPath(self.staging) / self.job_key / JOB_NAME)

    def unique_items(self) -> list[Item]:
        """Each content key once (two fields naming one directory copy it once)."""
        seen, out = set(), []
        for item in self.items:
            if item.key not in seen:
                seen.add(item.key)
                out.append(item)
        return out


def _files(path: Path) -> list[tuple[PurePosixPath, Path]]:
    """A file itself, or every file under a directory (links followed), by relative path, sorted."""
    if path.is_file():
        return [(PurePosixPath(path.name), path)]
    return sorted((PurePosixPath(os.path.relpath(os.path.join(d, f), path)), Path(d) / f)
                  for d, _, names in os.walk(path, followlinks=True) for f in names)  # fmt: skip


def signature(path: Path) -> str:
    """What ``content_key`` depends on as the filesystem tells it without reading a byte: each file's relative path,
    size, modification time and mode. Equal signatures, equal content (the key is not hashed again)."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for rel, full in _files(path):
        st = full.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\0".encode())
    return h.hexdigest()


def cached_content_key(path: Path, cache: Path | None = None) -> tuple[str, int]:
    """``content_key``, remembered by ``signature`` in ``$XDG_CACHE_HOME/hpcft/content-keys.json``: a submit of a
    large unchanged model reads its files' metadata, not its bytes."""
    import json

    cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpcft" / "content-keys.json"
    sig = signature(path)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(sig), list) and len(known[sig]) == 2:
        return known[sig][0], int(known[sig][1])
    key = content_key(path)
    with contextlib.suppress(OSError):
        from hpcft.rundir.store import write_atomic

        known = known if isinstance(known, dict) else {}
        known = dict(list(known.items())[-999:]) | {sig: list(key)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known))
    return key


def content_key(path: Path) -> tuple[str, int]:
    """The sha256 (first ``KEY_CHARS`` hex digits) of a file's bytes or a directory's tree, and its size."""
    h, size = hashlib.sha256(), 0
    h.update(b"file\0" if path.is_file() else b"dir\0")
    for rel, full in _files(path):
        h.update(str(rel).encode() + b"\0" + (b"x" if os.access(full, os.X_OK) else b"-"))
        with open(full, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        h.update(b"\0")
    return h.hexdigest()[:KEY_CHARS], size


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def _local(value: str, base: Path) -> Path:
    return base / os.path.expanduser(os.path.expandvars(value))


def _looks_like_path(word: str) -> bool:
    """A command word hpcft copies when it exists here: a path with a folder or an extension, not an option."""
    return not word.startswith("-") and ("/" in word or "." in word) and "{" not in word


def plan_stage(
    job_file: str | None,
    *,
    staging: str,
    overrides: Sequence[str] = (),
    command: Sequence[str] = (),
    profile: str | None = None,
    accelerate_config: str | None = None,
    cwd: Path | None = None,
) -> StagePlan:
    """Decide what to copy for a job and rewrite its inputs to the copies; ``ConfigError`` lists every problem."""
    cwd = cwd or Path.cwd()
    plan, problems = StagePlan(staging=staging), []
    keys: dict[Path, tuple[str, int]] = {}

    def stage(local: Path, what: str) -> str:
        local = local.resolve()
        if local not in keys:
            try:
                keys[local] = cached_content_key(local)
            except OSError as e:
                problems.append(f"{what}: cannot read {local}: {e.strerror}")
                return str(local)
        key, size = keys[local]
        remote = str(PurePosixPath(staging) / key / local.name)
        plan.items.append(Item(local=local, key=key, size=size, remote=remote, what=what))
        return remote

    data, base = _read_job(job_file, cwd)
    _stage_fields(data, base, stage, plan, problems)
    plan.passthrough = passthrough_names(data, overrides)
    job_command = _get(data, "launch.command")
    if isinstance(job_command, list):
        _set(data, "launch.command", _stage_words(job_command, base, stage))
    plan.command = _stage_words(list(command), cwd, stage)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key in INPUT_KEYS and value and _local(value, cwd).exists():
            item = f"{key}={stage(_local(value, cwd), f'-o {key}')}"
        elif sep and key in OUTPUT_KEYS and value and not os.path.isabs(value):
            problems.append(f"-o {key}={value}: relative; give an absolute path on the cluster")
        plan.overrides.append(item)
    if profile:
        plan.profile = stage(_local(profile, cwd), "--profile") if _local(profile, cwd).exists() else profile
    if accelerate_config:
        local = _local(accelerate_config, cwd)
        plan.accelerate_config = stage(local, "--accelerate-config") if local.exists() else accelerate_config
    if problems:
        raise ConfigError(problems, job_file)
    plan.job_text = "# staged by hpcft from a workstation\n" + yaml.safe_dump(data, sort_keys=False)
    plan.job_key = hashlib.sha256(plan.job_text.encode()).hexdigest()[:KEY_CHARS]
    return plan


def passthrough_names(data: dict[str, Any], overrides: Sequence[str]) -> tuple[str, ...]:
    """The names of ``launch.env_passthrough`` (a job file's or spec's data, or an ``-o``'s): they travel from this
    shell."""
    from hpcft.spec.layering import load_yaml_text

    names = _get(data, "launch.env_passthrough")
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "launch.env_passthrough":
            with contextlib.suppress(yaml.YAMLError):
                names = load_yaml_text(value)
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def values_here(names: Sequence[str]) -> dict[str, str]:
    """The values of ``names`` from this shell, for a remote submit's or resume's stdin; a name not set here is an
    error (the job would start without it), as it is on the cluster."""
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise ConfigError([f"launch.env_passthrough: {n} is not set in this shell; from a workstation the job takes "
                           f"its value from here (HINT: export {n}=... first)" for n in missing])  # fmt: skip
    return {n: os.environ[n] for n in names}


def _read_job(job_file: str | None, cwd: Path) -> tuple[dict[str, Any], Path]:
    """The job file's own data, unresolved (relative paths stay relative), and the folder they are relative to."""
    from hpcft.spec.layering import load_yaml_text

    if not job_file:
        return {}, cwd
    path = Path(job_file)
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"cannot read the job file: {getattr(e, 'strerror', None) or e}"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(data).__name__}"], str(path))
    return data, path.resolve().parent


def _stage_fields(data: dict[str, Any], base: Path, stage, plan: StagePlan, problems: list[str]) -> None:
    """The job file's path fields: inputs here staged, cluster paths referenced, relative outputs refused."""
    for dotted in INPUT_KEYS:
        value = _get(data, dotted)
        if isinstance(value, str) and value:
            local = _local(value, base)
            if local.exists():
                _set(data, dotted, stage(local, dotted))
            elif not os.path.isabs(os.path.expanduser(value)):
                problems.append(f"{dotted}: {value} (relative to {base}) exists neither here nor as a cluster path "
                                "(HINT: give the file, or an absolute path on the cluster)")  # fmt: skip
            else:
                plan.referenced.append((dotted, value))
    for dotted in OUTPUT_KEYS:
        value = _get(data, dotted)
        if isinstance(value, str) and value and not os.path.isabs(value):
            problems.append(f"{dotted}: {value!r} is relative; on a cluster it would land in the staging area "
                            "(HINT: an absolute path on the cluster, or leave it out)")  # fmt: skip


def _stage_words(words: list, base: Path, stage) -> list:
    """A command's words with the local files among them (the script, a config) replaced by their copies."""
    out = []
    for word in words:
        if isinstance(word, str) and _looks_like_path(word) and _local(word, base).exists():
            out.append(stage(_local(word, base), f"command word {word!r}"))
        else:
            out.append(word)
    return out
