"""Lemon nodes: the nodes this runs directory's jobs found at fault, remembered with a decay.

A node named by a hang (a suspect) or a straggler event, lost under a shrinking job, or marked down by SLURM
during a run that was lost to it (NODE_FAIL: SLURM's node events, read by the next run's begin-job) gets an incident in
``RUNS_DIR/.hpcft-nodes.json``. Each incident weighs 1 and halves every ``HALF_LIFE_H`` hours; a node
whose weight is at least ½ is a lemon: one incident keeps a node out for a day, two for two days.
Requeues (after-job) and new jobs of the runs directory (submit, resume) exclude lemons, where the
partition keeps enough nodes without them (``run.avoid_lemons``; ``hpcft nodes`` lists them and
``--forget NODE`` clears one). Only the runs directory is shared: nothing here asks SLURM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcft.rundir import store

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

FILE = ".hpcft-nodes.json"
HALF_LIFE_H = 24.0
LEMON = 0.5
KEEP = 500  # incidents kept, newest last


def path(runs_dir: str | Path) -> Path:
    """The runs directory's node record."""
    return Path(runs_dir) / FILE


def read_incidents(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every recorded incident (a damaged or missing record: none)."""
    try:
        data = json.loads(path(runs_dir).read_text())
    except (OSError, ValueError):
        return []
    found = data.get("incidents") if isinstance(data, dict) else None
    found = found if isinstance(found, list) else []
    return [i for i in found if isinstance(i, dict) and isinstance(i.get("node"), str)]


def record(runs_dir: str | Path, nodes: Iterable[str], why: str, run: str) -> None:
    """Add one incident per node (``why``: what happened; ``run``: the run directory's name)."""
    nodes = sorted(set(nodes))
    if not nodes:
        return
    with store.locked(path(runs_dir).with_suffix(".lock")):
        incidents = read_incidents(runs_dir)
        incidents += [{"node": n, "why": why, "run": run, "time": time.time()} for n in nodes]
        store.write_atomic(path(runs_dir), json.dumps({"incidents": incidents[-KEEP:]}, indent=1) + "\n")


def forget(runs_dir: str | Path, node: str) -> int:
    """Drop a node's incidents; how many there were."""
    with store.locked(path(runs_dir).with_suffix(".lock")):
        incidents = read_incidents(runs_dir)
        kept = [i for i in incidents if i["node"] != node]
        store.write_atomic(path(runs_dir), json.dumps({"incidents": kept}, indent=1) + "\n")
    return len(incidents) - len(kept)


def weights(incidents: Iterable[Mapping[str, Any]], now: float, half_life_h: float = HALF_LIFE_H) -> dict[str, float]:
    """Node → the decayed weight of its incidents; pure."""
    out: dict[str, float] = {}
    for i in incidents:
        age_h = max(0.0, now - float(i.get("time", 0))) / 3600
        out[i["node"]] = out.get(i["node"], 0.0) + 0.5 ** (age_h / half_life_h)
    return out


def lemons(incidents: Iterable[Mapping[str, Any]], now: float) -> list[str]:
    """The nodes to keep out now, sorted; pure."""
    return sorted(n for n, w in weights(incidents, now).items() if w >= LEMON)


def exclusion(lemon_nodes: Iterable[str], partition: Iterable[str] | None, needed: int) -> tuple[list[str], str]:
    """Which lemons a job of ``needed`` nodes can do without in ``partition`` (its node names; None: unknown),
    and what to say; pure. None excluded where the partition would keep too few nodes: a job that can never
    start is worse than one on a suspect node."""
    partition = None if partition is None else set(partition)
    candidates = sorted(set(lemon_nodes) & partition) if partition is not None else []
    if not candidates:
        return [], ""
    if len(partition) - len(candidates) < needed:
        return [], (f"lemon nodes {','.join(candidates)} kept: without them the partition has "
                    f"{len(partition) - len(candidates)} of the {needed} nodes the job needs")  # fmt: skip
    return candidates, f"excluding lemon nodes {','.join(candidates)} (hpcft nodes; run.avoid_lemons: false keeps them)"


def to_exclude(runs_dir: Path, spec: JobSpec, partition_nodes: Callable[[str | None], list[str] | None]
               ) -> tuple[str | None, str]:  # fmt: skip
    """The ``--exclude`` host list for a job of ``spec`` in ``runs_dir`` (the user's ``resources.exclude``
    first) and a note; ``partition_nodes`` asks SLURM (``client.partition_nodes``) only when there are lemons."""
    already, needed = spec.resources.exclude, spec.resources.nodes
    if not spec.run.avoid_lemons:
        return already, ""
    found = lemons(read_incidents(runs_dir), time.time())
    if not found:
        return already, ""
    chosen, note = exclusion(found, partition_nodes(spec.resources.partition), needed)
    merged = ",".join([*([already] if already else []), *chosen])
    return merged or None, note
