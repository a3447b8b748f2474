"""How often to save: the availability-optimal checkpoint interval for a run's own fault rate; pure.

Young (1974) gives ``√(2 · Ts · MTBF)`` for a save of ``Ts`` seconds and a mean time between failures
``MTBF``; Daly (2006, "A higher order estimate of the optimum checkpoint interval for restart dumps")
refines it to ``√(2·Ts·M) · (1 + ⅓·√(Ts/2M) + (Ts/2M)/9) − Ts`` for ``Ts < 2M``, else ``M`` — used here,
never below ``Ts`` (a save cannot start before the last one is done).

The MTBF is the run's own: the time its jobs held their nodes (``state.json: goodput.held``, recorded at
each job end) ÷ the faults it saw (restarts, requeues after a preemption or a crash, node losses; not time
limits, which come announced). A run that has seen no fault yet gets a prior: one failure per
``NODE_MTBF_PRIOR_S`` node-seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

FAULT_ACTIONS = ("restart", "requeue", "shrink")  # events that end work early; a time limit is no fault
# About 1,000 node-hours between failures: Meta's research clusters saw a mean time to failure of ~8 h for
# 1,024-GPU jobs (128 nodes) (Kokolis et al., "Revisiting Reliability in Large-Scale Machine Learning Research
# Clusters", 2024). A prior only: a run's own faults replace it.
NODE_MTBF_PRIOR_S = 1000 * 3600


def faults(events: Iterable[Mapping[str, Any]]) -> int:
    """The faults among a run's events (not time limits, not the hang event that precedes its restart)."""
    return sum(1 for e in events if e.get("action") in FAULT_ACTIONS and e.get("kind") not in ("time limit", "hang"))


def young_interval(save_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum ``√(2 · Ts · MTBF)``."""
    return math.sqrt(2 * save_s * mtbf_s)


def daly_interval(save_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum (see the module docstring), at least ``save_s``."""
    if save_s >= 2 * mtbf_s:
        return max(mtbf_s, save_s)
    x = save_s / (2 * mtbf_s)
    return max(save_s, young_interval(save_s, mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - save_s)


def auto_save_steps(events: Iterable[Mapping[str, Any]], held_s: float | None, save_s: float | None,
                    step_s: float | None, nodes: int, bounds: tuple[int, int]) -> dict[str, Any]:  # fmt: skip
    """``train.save_steps: auto`` for the next segment: ``{"save_steps": N, "why": text, ...figures}``.

    Without a measured save or step time (a first segment) the upper bound; else Daly's interval in steps,
    within ``bounds`` (``train.save_steps_min``, ``_max``)."""
    low, high = bounds
    seen = faults(events)
    if seen and held_s:
        mtbf, source = held_s / seen, f"{seen} fault(s) in {held_s:.0f} s held"
    else:
        mtbf, source = NODE_MTBF_PRIOR_S / max(1, nodes), f"no fault yet: {NODE_MTBF_PRIOR_S // 3600} h per node"
    if not save_s or not step_s:
        return {"save_steps": high, "why": "no save or step time measured yet: train.save_steps_max"}
    interval = daly_interval(save_s, mtbf)
    wanted = max(1, round(interval / step_s))
    steps = min(high, max(low, wanted))
    bound = f" ({wanted} steps, held within train.save_steps_min/max)" if steps != wanted else ""
    return {"save_steps": steps, "interval_s": round(interval, 1), "mtbf_s": round(mtbf, 1), "save_s": save_s,
            "step_s": round(step_s, 4), "faults": seen,
            "why": f"Daly's optimum every {interval:.0f} s{bound}: save {save_s:.2f} s, step {step_s:.3f} s, "
                   f"MTBF {mtbf:.0f} s ({source})"}  # fmt: skip


def chosen(value: int | str, state: Mapping[str, Any], high: int) -> int:
    """The ``save_steps`` a rank trains with: the spec's number, or for ``auto`` the choice begin-job recorded
    for this job (``state.json: auto_save``); ``high`` where none was recorded (the local backend)."""
    if value != "auto":
        return int(value)
    steps = (state.get("auto_save") or {}).get("save_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 else high
