"""Two costs of torch's c10d rendezvous (torchrun's ``--rdzv-backend=c10d``) that every start and restart pays,
and the first round of an elastic one.

Applied by every torchrun agent hpcft starts (``hpcft.train.warm`` for its trainer, ``hpcft.train.torchrun`` for a
user's command) before it runs torchrun's; measured on the lab with py-spy (``benchmarks/RESULTS.md``, P15) and
read in torch 2.13's ``torch/distributed/elastic/rendezvous/dynamic_rendezvous.py``:

- **The join polls once a second, and reads a state up to a second old.** An agent that has joined and waits
  for the others (``_DistributedRendezvousOpExecutor.run``, action ``SYNC``) sleeps ``_delay(seconds=1)``
  before it reads the shared state again, and that read is served from the state holder's cache when the last
  one is under ``cache_duration`` (1 s) old (``_BackendRendezvousStateHolder.sync``): the first agents to join
  notice the last one ~1 s late — at the job's start and at every in-job restart (traced on the lab: the
  second of 2 agents completed the rendezvous, the first saw it 0.9 s later). Here, during a wait only, the
  wait starts at ``FIRST_POLL_S`` and grows by ``POLL_GROWTH`` per poll up to torch's second, and every poll
  reads the store (``join_poll_delays``: a few more reads per agent in the first second, then torch's own
  pace); outside a wait the cache is torch's (the agent's checks every 0.1 s for waiting nodes read the store
  once a second, as before). The first round's random 0–0.3 s skew, which spreads many agents' first writes,
  is torch's own, unchanged.
- **Every rendezvous event finds its caller's name through ``inspect.stack()``** (``get_method_name``, twice per
  event), which reads the source file of every frame on the stack: ~0.15 s of an agent's CPU per rendezvous
  here. ``sys._getframe`` gives the same name without reading any file (``method_name``).
- **An elastic rendezvous (``--nnodes=LOW:N``) may start the job on fewer nodes than it has.** A round completes
  once LOW agents joined and ``last_call_timeout`` passed (``_DistributedRendezvousOpExecutor._add_to_participants``).
  hpcft sets it short so that the nodes left after a node loss train on within seconds
  (``hpcft.launchers.torchrun.SURVIVORS_RDZV_CONF``); but at the job's start an agent slower than that (a busy
  node, a slow filesystem) would be left out, and admitted only by a restart of every rank once it joins. Here
  each agent's first round waits for all N (``full_first_round``: its settings say LOW = N until it completes);
  later rounds are torch's.

The patches replace attributes of torch's module and classes, once per process (``apply``; torch's own are kept in
``dynamic_rendezvous._hpcft_torch``); the tests check that torch's code still has the shape patched here
(``tests/train/test_elastic_workarounds.py``), so a torch upgrade that changes it fails a test instead of
silently losing the fix.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

FIRST_POLL_S = 0.05
POLL_GROWTH = 1.5
TORCH_POLL_S = 1.0  # dynamic_rendezvous's own delay between two reads of the state while an agent waits

_poll = threading.local()


def next_poll(wait: float) -> float:
    """The wait after a wait of ``wait`` seconds between two reads of the rendezvous state."""
    return min(wait * POLL_GROWTH, TORCH_POLL_S)


def join_poll_delays(count: int) -> list[float]:
    """The first ``count`` waits of an agent between reads of the rendezvous state (torch: 1 s each)."""
    out = [FIRST_POLL_S]
    while len(out) < count:
        out.append(next_poll(out[-1]))
    return out[:count]


def method_name(depth: int = 2) -> str:
    """``dynamic_rendezvous.get_method_name`` without ``inspect.stack()``: the function ``depth`` frames up."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:  # the stack is not that deep (torch's own answer then)
        return "no_method_name"


def apply() -> None:
    """Patch torch's dynamic rendezvous in this process (idempotent)."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    if hasattr(dr, "_hpcft_torch"):
        return
    torch_delay = dr._delay
    torch_run = dr._DistributedRendezvousOpExecutor.run
    dr._hpcft_torch = {
        "_delay": torch_delay,
        "run": torch_run,
        "get_method_name": dr.get_method_name,
        "next_rendezvous": dr.DynamicRendezvousHandler.next_rendezvous,
    }

    def delay(seconds: float | tuple[float, float]) -> None:
        if seconds != TORCH_POLL_S:  # the first round's random skew
            torch_delay(seconds)
            return
        wait = getattr(_poll, "next", FIRST_POLL_S)
        _poll.next = next_poll(wait)
        _sleep(wait)

    def run(self, *args, **kwargs):
        _poll.next = FIRST_POLL_S  # every wait (a join, a leave, a restart's join) starts quick
        holder = self._state_holder
        if not hasattr(holder, "_cache_duration"):
            return torch_run(self, *args, **kwargs)
        # torch's own value, kept once: the keep-alive thread runs ops through here too, and must not restore
        # the 0 of a wait under way as if it were torch's
        cached = holder.__dict__.setdefault("_hpcft_cache_duration", holder._cache_duration)
        holder._cache_duration = 0  # each quick poll reads the state: torch serves reads from a 1 s cache
        try:
            return torch_run(self, *args, **kwargs)
        finally:
            holder._cache_duration = cached  # outside a wait (the agent's 0.1 s checks) as torch has it

    dr._delay = delay
    dr._DistributedRendezvousOpExecutor.run = run
    dr.get_method_name = method_name
    dr.DynamicRendezvousHandler.next_rendezvous = full_first_round(dr.DynamicRendezvousHandler.next_rendezvous)


def full_first_round(torch_next):
    """``next_rendezvous`` whose first round on a handler needs all ``max_nodes``, whatever ``min_nodes`` says."""

    def next_rendezvous(self):
        settings = self._settings
        if self.__dict__.get("_hpcft_first_done") or settings.min_nodes == settings.max_nodes:
            return torch_next(self)
        full = dataclasses.replace(settings, min_nodes=settings.max_nodes)
        holders = [h for h in (self, self._op_executor, self._state_holder) if h.__dict__.get("_settings") is settings]
        for holder in holders:  # the handler, its op executor and its state holder each keep the settings
            holder._settings = full
        try:
            info = torch_next(self)
            self._hpcft_first_done = True
            return info
        finally:
            for holder in holders:
                holder._settings = settings

    return next_rendezvous


def _sleep(seconds: float) -> None:
    time.sleep(seconds)
