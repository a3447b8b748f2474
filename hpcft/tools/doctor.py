"""``hpcft doctor``: submit a small probe job on N nodes and turn what it saw into pass/fail rows.

Decides the probe job (the job file's resources, partition, setup and python; torchrun; a short
time limit; no requeue; run name ``doctor``), waits for it with a deadline (cancelling it when the
deadline passes, so the doctor never hangs), and reads ``RUN/doctor/report.json`` written by
``hpcft.tools.doctor_probe``. When the probe could not report — a node that cannot see the run
directory stops the job in ``hpcft node``'s preflight, a rendezvous that never forms times out —
the rows come from the per-node fact files and the job's output instead. Printing is the CLI's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any

from hpcft.errors import ConfigError, HpcftError
from hpcft.launchers.command import literal
from hpcft.plan import memory, pipeline
from hpcft.plan.plan import Plan
from hpcft.rundir import layout, store
from hpcft.spec import JobSpec, field_paths

SHIM_FILE = "doctor_probe.py"
# torchrun runs a script path; the run directory holds no other .py, so the script's directory on
# sys.path cannot shadow a library (hpcft/train/ would: it has data.py, model.py, ...).
SHIM = "import runpy\n\nrunpy.run_module('hpcft.tools.doctor_probe', run_name='__main__')\n"
REPORT = "doctor/report.json"
PREFLIGHT = re.compile(r"preflight failed: (.*)")


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    check: str
    node: str
    status: str  # pass | fail | warn | skip
    detail: str
    hint: str = ""


def plan_doctor(
    job_file: str | None,
    flags: Mapping[str, Any],
    overrides: Sequence[str],
    profile: str | None,
    timeout: float,
    *,
    python: str,
    now: datetime,
    check_nvme: bool,
    shared_dirs: Sequence[str] = (),
) -> Plan:
    """The probe job's plan: the job file's resources and launch setup, torchrun, a short time limit.

    Through the planning pipeline like every job; the probe script (``hpcft.tools.doctor_probe``
    behind a shim in the run directory) takes the job's place, so the job's own inputs are not checked.
    """
    from hpcft.slurm import client

    if not client.sbatch_available():
        raise HpcftError("hpcft doctor submits a probe job, but sbatch is not on PATH", hint="run it on a login node")
    known = set(field_paths())
    fixed: dict[str, Any] = {
        **{k: v for k, v in flags.items() if v is not None},
        "run.name": "doctor",
        "launch.backend": "sbatch",
        "launch.launcher": "torchrun",
        "launch.command": [SHIM_FILE],  # a placeholder; the real path is in the run directory
        "resources.time": str(max(5, math.ceil(timeout / 60))),
    }
    if "run.requeue" in known:
        fixed["run.requeue"] = False  # a failing probe must end the job, not requeue it
    req = pipeline.Request(job_file=job_file, profile=profile, overrides=tuple(overrides), flags=fixed,
                           check_inputs=False)  # fmt: skip

    def probe_script(spec: JobSpec, run: str) -> JobSpec:
        args = probe_args(spec, check_nvme, shared_dirs)
        # The probe's own {node} is no launch.command placeholder: it must reach the probe as written.
        launch = dataclasses.replace(spec.launch, command=(str(PurePath(run) / SHIM_FILE), *map(literal, args)))
        return dataclasses.replace(spec, launch=launch)

    plan = pipeline.plan_job(req, python=python, now=now, refine=probe_script).plan
    return dataclasses.replace(plan, files={**plan.files, SHIM_FILE: SHIM})


def probe_args(spec: JobSpec, check_nvme: bool, shared_dirs: Sequence[str]) -> list[str]:
    """The probe script's arguments for the job's resources and offload path."""
    args = ["--gpus-per-node", str(spec.resources.gpus_per_node)]
    for directory in shared_dirs:
        args += ["--shared-dir", directory]
    if nvme_path(spec):
        args += ["--nvme-path", str(nvme_path(spec)), "--nvme-need-gb", f"{nvme_need_gb(spec):.2f}"]
    if check_nvme:
        args.append("--check-nvme")
    return args


def nvme_path(spec: JobSpec) -> str | None:
    """The NVMe offload directory of the spec (read defensively: the offload fields may be absent)."""
    offload = getattr(spec.train, "offload", None)
    return getattr(offload, "nvme_path", None) or None


def nvme_need_gb(spec: JobSpec) -> float:
    """NVMe per node the planner expects for ZeRO-3 + NVMe offload; 0 when the model is unknown."""
    if not spec.train.model:
        return 0.0
    try:
        params = memory.count_parameters(memory.read_model_config(spec.train.model))
    except ConfigError:
        return 0.0
    estimates = memory.estimate(params, spec.resources.nodes, spec.resources.gpus_per_node)
    return next(e for e in estimates if e.offload == "nvme").nvme / memory.GB


def wait(run: Path, timeout: float, on_poll: Callable[[Any], None] | None = None, interval: float = 2.0) -> Any:
    """Poll the probe job (one squeue per poll) until it ends; cancel it once ``timeout`` s have passed."""
    from hpcft.backends import actions as backends
    from hpcft.ops import status as monitor

    deadline = time.monotonic() + timeout
    while True:
        status = monitor.run_statuses([run])[0]
        if on_poll:
            on_poll(status)
        if status.ended:
            return status
        if time.monotonic() > deadline:
            backends.cancel(run)
            return dataclasses.replace(status, state="TIMEOUT (cancelled by hpcft doctor)")
        time.sleep(interval)


def collect(run: Path, state: str, nodelist: str) -> list[Check]:
    """The rows for a probe job that ended in ``state`` on ``nodelist``, from the files it left."""
    from hpcft.slurm.env import expand_hosts

    report = _read_json(run / REPORT)
    facts = {p.stem.removeprefix("node-"): _read_json(p) for p in (run / "doctor").glob("node-*.json")}
    try:
        hosts = expand_hosts(nodelist) if nodelist and nodelist != "None assigned" else []
    except HpcftError:
        hosts = []
    state_data = store.read_state(run)
    job = state_data["jobs"][-1]["id"] if state_data["jobs"] else ""
    output = _read_text(run / layout.LOGS_DIR / f"slurm-{job}.out")
    return summarize(report, facts, hosts, state, output)


def summarize(
    report: dict[str, Any] | None, facts: Mapping[str, Any], hosts: Sequence[str], state: str, output: str
) -> list[Check]:
    """Rows from the probe's report, or — without one — from the node files and the job output; pure."""
    if report is not None:
        rows = [Check(**r) for r in report["checks"]]
        if state != "COMPLETED":
            rows.append(Check("probe job", "all", "fail", f"ended {state} after writing its report", _logs_hint()))
        return rows
    rows = [Check("probe job", "all", "fail", f"ended {state} without a report", _logs_hint())]
    preflight = [m.group(1).strip() for m in PREFLIGHT.finditer(output)]
    for host in hosts or sorted(facts):
        said = [p for p in preflight if f"node {host}:" in p]
        if said:
            rows.append(Check("node preflight", host, "fail", said[0], _hint_for(said[0])))
        elif host in facts:
            rows.append(Check("probe started", host, "pass", "wrote its facts; the checks across nodes did not end"))
        else:
            rows.append(Check("probe started", host, "fail", "no probe ran on this node", _logs_hint()))
    if not hosts and not facts:
        tail = [line for line in output.splitlines() if line.strip()][-3:]
        rows.append(Check("job output", "all", "fail", " | ".join(tail) or "(empty)", _logs_hint()))
    return rows


def _hint_for(message: str) -> str:
    if "cannot see the run directory" in message:
        return "the runs directory must be on a filesystem shared by all nodes (run.runs_dir / --runs-dir)"
    return _logs_hint()


def _logs_hint() -> str:
    return "`hpcft logs RUN` shows the job output; `hpcft logs RUN --node NAME` one node's ranks"


def failed(rows: Sequence[Check]) -> bool:
    """True when any row failed (the doctor then exits non-zero)."""
    return any(r.status == "fail" for r in rows)


def doctor_table(rows: Sequence[Check]):
    """A Rich table of the rows (the caller prints it)."""
    from rich.table import Table
    from rich.text import Text

    styles = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}
    table = Table("check", "node", "result", "detail", "hint", header_style="bold")
    for r in rows:
        table.add_row(r.check, r.node, Text(r.status.upper(), style=styles.get(r.status, "")), r.detail, r.hint)
    return table


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
