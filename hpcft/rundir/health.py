"""The node watchdogs' records in the run directory: hang reports, node speeds, and their events.

Progress itself is watched on each node (``hpcft.node.watchdog``); here only what a person or node 0
must read, never written per step:
- ``RUN/nodes/NODE.json``: each node's step, step time and its ranks' compute time, rewritten every few
  seconds (one small file per node);
- ``RUN/hangs/EPISODE/``, when a node's ranks hang: for each node ``NODE.json`` (its ranks: step, phase,
  seconds silent, process state, stack group) and ``NODE.stacks.txt`` (py-spy's dump of every rank,
  grouped by identical stack). An episode is one hang of one job segment (``JOB.RESTART.START``: the
  segment and the ranks' start count in it, which every node reads alike);
- ``RUN/hangs/request-SEGMENT``: the episode the agent that found a hang asks every node's agent to report
  before any rank is killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcft.rundir import store

HANGS_DIR = "hangs"
NODES_DIR = "nodes"


def episode_dir(run: Path, episode: str) -> Path:
    """The folder of one hang's reports."""
    return run / HANGS_DIR / episode


def episode(run: Path, segment: str, job_id: str) -> str:
    """``JOB.RESTART.START``: the segment and how many times its ranks have started so far (state.json)."""
    try:
        job = next((j for j in store.read_state(run).get("jobs", []) if j.get("id") == job_id), {})
    except Exception:  # an unreadable state.json must not stop the report
        job = {}
    return f"{segment}.{int(job.get('rank_starts', 0) or 0)}"


def write_node_report(run: Path, episode_name: str, node: str, report: dict[str, Any], stacks: str) -> Path:
    """Write one node's report (stacks first, the JSON last: a reader that sees the JSON finds both)."""
    folder = episode_dir(run, episode_name)
    folder.mkdir(parents=True, exist_ok=True)
    store.write_atomic(folder / f"{node}.stacks.txt", stacks)
    store.write_atomic(folder / f"{node}.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return folder


def read_node_reports(run: Path, episode_name: str) -> dict[str, dict[str, Any]]:
    """The reports written so far for an episode, by node (a damaged one is skipped)."""
    return _by_node(episode_dir(run, episode_name))


def describe(event: Mapping[str, Any]) -> str:
    """One line for the job output and ``hpcft status``: what hung, where, since when, which stacks; pure."""
    who = "; ".join(f"{s['node']}" + (f" rank {s['rank']}" if s.get("rank") is not None else "") + f": {s['why']}"
                    for s in event.get("suspects", [])) or "no rank stands out (every stack alike)"  # fmt: skip
    return (f"hung at step {event.get('step')} since {event.get('since')} ({event.get('silent')} s silent, "
            f"allowed {event.get('allowed')} s); suspects: {who}; stacks in {event.get('stacks')}")  # fmt: skip


def write_node_speed(run: Path, node: str, summary: dict[str, Any]) -> None:
    """This node's current speed (step, seconds per step, the ranks' own compute per step)."""
    folder = run / NODES_DIR
    folder.mkdir(exist_ok=True)
    store.write_atomic(folder / f"{node}.json", json.dumps({**summary, "node": node}, sort_keys=True) + "\n")


def read_node_speeds(run: Path) -> dict[str, dict[str, Any]]:
    """Every node's newest speed summary, by node (a damaged one is skipped)."""
    return _by_node(run / NODES_DIR)


def _by_node(folder: Path) -> dict[str, dict[str, Any]]:
    """``NODE.json`` files of ``folder`` by node; a damaged or vanishing one is skipped."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def request_stacks(run: Path, segment: str, episode_name: str) -> None:
    """Ask every node's agent of this job segment for its ranks' stacks for ``episode_name`` (a hang)."""
    folder = run / HANGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    store.write_atomic(folder / f"request-{segment}", episode_name + "\n")


def stacks_requested(run: Path, segment: str) -> str | None:
    """The episode whose stacks this segment's agents were asked for, if any."""
    try:
        return (run / HANGS_DIR / f"request-{segment}").read_text().strip() or None
    except OSError:
        return None


def claim_episode(run: Path, episode_name: str) -> bool:
    """True for the one node agent that records this hang (the first to claim it; the others only report)."""
    folder = episode_dir(run, episode_name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / ".recorded", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


STRAGGLERS = "stragglers"  # state.json's list of straggler events: apart from the run's lifecycle "events"


def record_event(run: Path, event: dict[str, Any]) -> None:
    """Add a watchdog event to state.json: a ``hang`` (a restart follows) to the run's ``events``, a
    ``straggler`` (nothing happens to the run) to ``stragglers``. An event with the ``episode`` of one
    already there replaces it (a hang's suspects are refined as the nodes' reports arrive), keeping its time."""
    key = STRAGGLERS if event.get("kind") == "straggler" else "events"

    def change(state: dict[str, Any]) -> None:
        listed = state.setdefault(key, [])
        for i, old in enumerate(listed):
            if event.get("episode") and isinstance(old, dict) and old.get("episode") == event["episode"] \
                    and old.get("kind") == event.get("kind"):  # fmt: skip
                listed[i] = {**event, "time": old.get("time") or store.now_iso()}
                return
        listed.append({**event, "time": store.now_iso()})

    store.update_state(run, change)


def newest_event(state: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The run's newest event of ``kind`` (``hang`` from ``events``, ``straggler`` from ``stragglers``), or None."""
    listed = state.get(STRAGGLERS if kind == "straggler" else "events", [])
    found = [e for e in listed if isinstance(e, dict) and e.get("kind") == kind] if isinstance(listed, list) else []
    return found[-1] if found else None
