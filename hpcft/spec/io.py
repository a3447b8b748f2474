"""The spec in and out: a merged mapping → ``JobSpec`` (every problem at once), and spec.yaml text.

The resolved spec written into the run directory (``dump_spec``) is the only input of the node and
training side; ``load_spec_text`` reads it back through the same rules.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from hpcft.errors import ConfigError
from hpcft.spec.model import JobSpec, parse_spec, spec_to_dict
from hpcft.spec.rules import check_spec


def build_spec(data: typing.Mapping[str, Any], source: str | None = None) -> JobSpec:
    """Turn a merged mapping into a ``JobSpec``; raise ``ConfigError`` with every problem."""
    spec, problems = parse_spec(data)
    if not problems:
        problems += check_spec(spec)
    if problems:
        raise ConfigError(problems, source)
    return spec


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML: the only input of the node and training side."""
    header = "# Resolved by hpcft; the node and training side read only this file.\n"
    return header + yaml.safe_dump(spec_to_dict(spec), sort_keys=False, allow_unicode=True)


# The job file format this hpcft writes and reads; an hpcft reads every older format (``migrate``). A workstation
# refuses a cluster whose hpcft has an older one (``hpcft.remote``): it could not read the job files sent to it.
SPEC_FORMAT = 2  # 2: launch.command (1: launch.script + script_args)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader where PyYAML has it


def load_yaml(text: str) -> Any:
    """YAML text (a spec.yaml) as data; ``yaml.YAMLError`` when it is not YAML."""
    return yaml.load(text, Loader=_LOADER)


def load_spec_text(text: str, source: str) -> JobSpec:
    """Parse a resolved spec written by ``dump_spec`` (by this or an earlier hpcft: see ``migrate``)."""
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML ({' '.join(str(e).split())})"], source) from None
    return build_spec(migrate(data) if isinstance(data, dict) else data, source=source)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A run spec written by an earlier hpcft in today's keys (a copy): upgrading hpcft while a run is
    queued or requeued must not strand it. ``launch.script`` + ``script_args`` became ``launch.command``;
    ``launch.max_restarts`` gave way to ``run.max_failures``, which the run already has."""
    launch = data.get("launch")
    if not isinstance(launch, dict) or not {"script", "script_args", "max_restarts"} & launch.keys():
        return data
    launch = dict(launch)
    script, args = launch.pop("script", None), launch.pop("script_args", None) or []
    launch.pop("max_restarts", None)
    if script and not launch.get("command"):
        launch["command"] = [script, *args]
    return {**data, "launch": launch}
