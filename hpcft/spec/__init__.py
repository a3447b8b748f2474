"""The job description: what a valid job is, how layers combine, and spec.yaml in and out.

``model`` (frozen dataclasses, per-value rules) → ``rules`` (cross-field rules, ZeRO and LoRA) →
``io`` (``build_spec``, spec.yaml text) → ``layering`` (defaults < profile < job YAML < ``-o`` < flags).
Reads only the job's own YAML files; imports nothing of the later stages. The names below are the
package's public face (``from hpcft.spec import JobSpec, build_spec``).
"""

from hpcft.spec.io import build_spec, dump_spec, load_spec_text
from hpcft.spec.model import (
    BACKENDS,
    LAUNCHERS,
    DataSpec,
    JobSpec,
    LaunchSpec,
    LoraSpec,
    MoESpec,
    OffloadSpec,
    ResourceSpec,
    RunSpec,
    TrainSpec,
    field_paths,
    offload_devices,
    spec_to_dict,
)
from hpcft.spec.rules import spec_notes

__all__ = [
    "BACKENDS",
    "LAUNCHERS",
    "DataSpec",
    "JobSpec",
    "LaunchSpec",
    "LoraSpec",
    "MoESpec",
    "OffloadSpec",
    "ResourceSpec",
    "RunSpec",
    "TrainSpec",
    "build_spec",
    "dump_spec",
    "field_paths",
    "load_spec_text",
    "offload_devices",
    "spec_notes",
    "spec_to_dict",
]
