"""Job YAML → JobSpec: loading, layering and ``-o key=value`` overrides.

Precedence, lowest first (written down once, here):
    defaults < cluster profile (--profile) < job YAML < ``-o a.b=value`` < explicit CLI flags.

Relative paths in a YAML file (model, data, runs_dir, a command's file) are taken relative to that file,
so a job file works from any current directory; ``~`` and ``$VARS`` in them are expanded.
Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hpcft.errors import ConfigError
from hpcft.launchers.command import command_kind
from hpcft.spec.io import build_spec
from hpcft.spec.model import JobSpec, field_paths
from hpcft.spec.rules import PATH_KEYS, path_length_problem  # PATH_KEYS: resolved relative to their YAML file


class JobLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it: faster
    """PyYAML's safe loader without YAML 1.1's base-60 numbers: ``time: 12:00:00`` stays the text.

    PyYAML resolves ``12:00:00`` as the sexagesimal integer 43200 (YAML 1.1; YAML 1.2 dropped it), which
    sbatch would read as 43200 minutes, 30 days. Decimal, octal, hex and binary integers stay integers.
    """


JobLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def text_line(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def _construct_mapping(loader: JobLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: a key written twice is a mistake PyYAML would hide (the last wins)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        with contextlib.suppress(TypeError):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


JobLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str) -> Any:
    """YAML text → data, with ``JobLoader``."""
    return yaml.load(text, Loader=JobLoader)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read one YAML mapping; a missing file or bad YAML is a ``ConfigError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a directory, not a YAML file"]) from None
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        line = text_line(e.object, e.start)
        raise ConfigError([f"{p}: line {line}: not UTF-8 text (byte {e.object[e.start]:#04x}) (HINT: save the file "
                           "as UTF-8)"]) from None  # fmt: skip
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{p}: not valid YAML: {e}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: expected a mapping at the top level, got {type(data).__name__}"])
    return resolve_paths(data, p.resolve().parent)


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued keys of ``data`` absolute relative to ``base`` (a copy)."""
    out = copy.deepcopy(data)
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = str(base / os.path.expanduser(os.path.expandvars(node[leaf])))
    command = (out.get("launch") or {}).get("command") if isinstance(out.get("launch"), dict) else None
    if isinstance(command, list) and command and isinstance(command[0], str) and is_path(command[0]):
        out["launch"]["command"] = [str(base / os.path.expanduser(command[0])), *command[1:]]
    return out


def is_path(first: str) -> bool:
    """Whether a command's first word names a file (resolved like the other paths), not ``-m`` or a program."""
    return first != "-m" and (first.endswith(".py") or "/" in first)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "resources.exclusive=true"]`` → nested dict; values are YAML scalars."""
    out: dict[str, Any] = {}
    problems = []
    known = set(field_paths())
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"-o {item!r}: expected KEY=VALUE, e.g. -o train.lr=1e-4")
            continue
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"-o {key}: unknown key{hint}")
            continue
        try:
            value = load_yaml_text(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    if problems:
        raise ConfigError(problems)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating levels."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, everything else in ``top`` replaces ``base``."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def default_runs_dir() -> str:
    """``$HPCFT_RUNS_DIR``, else ``./hpcft-runs`` (resolved against the current directory)."""
    return os.environ.get("HPCFT_RUNS_DIR") or "hpcft-runs"


def load_job(
    job_file: str | os.PathLike | None,
    *,
    profile: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> JobSpec:
    """Load and layer everything into a validated ``JobSpec``.

    Args:
        job_file: the job YAML (None: defaults only, e.g. for a user script job).
        profile: optional cluster profile YAML, below the job file.
        overrides: ``-o key=value`` strings.
        flags: dotted keys set by explicit CLI flags (highest precedence); None values are unset.
    """
    layers: list[Mapping[str, Any]] = [{"run": {"runs_dir": default_runs_dir()}}]
    if profile:
        layers.append(read_yaml(profile))
    if job_file:
        layers.append(read_yaml(job_file))
    layers.append(parse_overrides(overrides))
    flag_layer: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_dotted(flag_layer, dotted, value)
    layers.append(flag_layer)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    merged = resolve_paths(merged, Path.cwd())  # -o / flag paths are relative to the cwd
    return build_spec(merged, source=str(job_file) if job_file else None)


def check_inputs(spec: JobSpec) -> None:
    """Check that the files the job reads exist (at submit time, on the shared filesystem); every problem at once.

    A path the system cannot even look at (too long, a loop of symbolic links, a failing filesystem) is the
    field's problem, never an ``OSError``.
    """
    problems = _trainer_inputs(spec) if not spec.launch.command else _command_inputs(spec.launch.command)
    launch = spec.launch
    problems += passthrough_problems(spec)
    if launch.accelerate_config:
        missing = f"file not found: {launch.accelerate_config} (HINT: `hpcft config --out FILE` writes one)"
        problems += _look("launch.accelerate_config", launch.accelerate_config, Path.is_file, missing)
    if launch.python and "/" in launch.python and not os.access(launch.python, os.X_OK):
        problems.append(f"launch.python: {launch.python} is not an executable file (HINT: a python every "
                        "node can run, e.g. a virtual environment on the shared filesystem)")  # fmt: skip
    if problems:
        raise ConfigError(problems)


def passthrough_problems(spec: JobSpec) -> list[str]:
    """``launch.env_passthrough`` names this shell does not have: sbatch passes the environment it runs in, so the
    job's ranks would start without them (checked at every submission, ``resume`` included)."""
    return [f"launch.env_passthrough: {name} is not set in this shell; the job takes its value from the "
            f"environment it is submitted from (HINT: export {name}=... first)"
            for name in spec.launch.env_passthrough if name not in os.environ]  # fmt: skip


def _trainer_inputs(spec: JobSpec) -> list[str]:
    """hpcft's trainer: the model directory and the data files."""
    train, problems = spec.train, []
    if train.model:
        config = Path(train.model) / "config.json"
        problems += _look("train.model", str(config), Path.is_file, f"{train.model} is not a model directory (no "
                          "config.json) (HINT: give a directory written by save_pretrained; `hpcft init-demo DIR` "
                          "makes one)")  # fmt: skip
        if not problems and (problem := _model_config_problem(config)):
            problems.append(f"train.model: {problem} (HINT: the config.json save_pretrained writes)")
    for key, value in (("train.data.train", train.data.train), ("train.data.eval", train.data.eval)):
        if value:
            problems += _look(key, value, Path.exists, f"file not found: {value}")
    return problems


def _command_inputs(command: tuple[str, ...]) -> list[str]:
    """A user's own command: its script, or the program it names by path."""
    if command_kind(command) == "script":
        return _look("launch.command", command[0], Path.is_file, f"file not found: {command[0]}")
    if "/" in command[0] and command_kind(command) == "program" and not os.access(command[0], os.X_OK):
        return [f"launch.command: {command[0]} is not an executable file "
                "(HINT: chmod +x it, or name a program on the nodes' PATH)"]  # fmt: skip
    return []


def _look(key: str, path: str, test: Callable[[Path], bool], missing: str) -> list[str]:
    """``[]`` when ``test(path)`` holds, else the field's problem: ``missing``, or why the system cannot look."""
    try:
        if test(Path(path)):
            return []
    except OSError as e:
        why = path_length_problem(path) if e.errno == errno.ENAMETOOLONG else None
        return [f"{key}: {why or f'cannot look at {path}: {e.strerror}'}"]
    return [f"{key}: {missing}"]


def _model_config_problem(path: Path) -> str | None:
    """Why ``config.json`` is not a model config (None when it is a JSON object)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {getattr(e, 'strerror', None) or e}"
    return None if isinstance(data, dict) else f"{path} holds a JSON {type(data).__name__}, not an object"
