"""``hpcft node``'s watchdog: finds this node's hung ranks from their heartbeats, names the culprit, restarts.

A rank is hung when its heartbeat (``hpcft.train.heartbeat``) has not moved for longer than its phase
allows (``allowance``): a training step gets ``max(run.hang_timeout, run.hang_step_factor × its measured
step time)``; start-up and the first step, a save (at least 3 × the last measured one), an eval and the
end get ``run.hang_phase_timeout``. A rank that has not published yet (still importing) is not judged.

On a hang, before anything is killed, the agent that found it asks every node's agent for its ranks'
stacks (``RUN/hangs/request-SEGMENT``, read by an agent whose ranks have been silent for
``QUIET_SECONDS``: no shared-filesystem read in a healthy run); each writes its ranks' states and py-spy stacks
to ``RUN/hangs/EPISODE/`` (``hpcft.rundir.health``) — a SIGSTOPped rank's too: ``--nonblocking`` reads
its memory without attaching. Once every node has reported (or after ``REQUEST_SECONDS``) the ranks are
SIGKILLed (stopped ones die too), so the launcher restarts them from the newest complete checkpoint
(torchrun's in-job restart, or ``hpcft node``'s), charged to ``run.max_failures`` like any restart. The
first agent that saw the hang (``health.claim_episode``) records the ``hang`` event that ``hpcft status``
shows, with the suspects (``suspects``) named from every node's report.

Why every node judges its own ranks: in a synchronous job one silent rank stops every rank within a
step (they wait for it in the next collective), so every node's watchdog fires within a poll or two of
the others, and none needs a per-step message from the rest. Why the request all the same: the first
agent to kill its ranks ends the others' collectives with an error, and a peer whose watchdog had not
fired yet would lose its stacks of the hang (seen on a busy lab).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcft.launchers.base import shape_of
from hpcft.plan.requeue import in_job_restarts
from hpcft.rundir import health, lemons, lifecycle, store
from hpcft.slurm.env import ClusterEnv, node_name
from hpcft.train import heartbeat
from hpcft.train.heartbeat import Beat

if TYPE_CHECKING:
    from hpcft.spec import JobSpec

POLL_SECONDS = 1.0  # reading a few small files in /dev/shm
GATHER_SECONDS = 20.0  # the recording agent waits this long for the other nodes' reports
REQUEST_SECONDS = 10.0  # the agent that found a hang waits this long for the others' stacks before killing
QUIET_SECONDS = 5.0  # a node looks for another node's stack request only once a rank has been silent this long
SPEED_SECONDS = 1.0  # each node rewrites its speed summary at most this often (RUN/nodes/NODE.json)
# Steps per speed summary (window). Node 0 names a node by the median of the windows over the last
# run.straggler_steps: 10-step windows give ~5 in the default 50 steps, so the median turns once ~3 windows are
# slow (a 40 % node named 82–111 steps in with 20-step windows, of which 2–3 fit) and one odd window is outvoted.
WINDOW_STEPS = 10


@dataclass(frozen=True)
class Rules:
    """How long each phase may stay silent (``run.hang_*``)."""

    timeout: float
    step_factor: float
    phase_timeout: float
    save_seconds: float = 0.0  # the last measured save

    @classmethod
    def of(cls, spec: JobSpec, save_seconds: float | None) -> Rules:
        run = spec.run
        return cls(run.hang_timeout, run.hang_step_factor, run.hang_phase_timeout, float(save_seconds or 0))


def allowance(beat: Beat, rules: Rules) -> float:
    """Seconds ``beat``'s rank may stay silent in its phase; pure."""
    if beat.phase == "train":
        return max(rules.timeout, rules.step_factor * beat.step_seconds)
    if beat.phase == "save":
        return max(rules.phase_timeout, 3 * rules.save_seconds)
    return rules.phase_timeout


def overdue(beats: list[Beat], now: float, rules: Rules) -> list[Beat]:
    """The ranks silent past their allowance; pure."""
    return [b for b in beats if now - b.time > allowance(b, rules)]


def node_speed(beats: list[Beat], last: Mapping[int, tuple[int, float, int]], segment: str,
               now: float) -> dict[str, Any]:  # fmt: skip
    """This node's summary for node 0 and ``hpcft status``: newest step, median step time and the median of its
    ranks' own time per step over the window since ``last`` (rank → (pid, own total, own steps) then); pure."""
    own = []
    for b in beats:
        pid, total, counted = last.get(b.rank, (b.pid, 0.0, 0))
        if pid != b.pid:  # a restarted rank: its sums start again
            total, counted = 0.0, 0
        if b.own_steps > counted:
            own.append((b.own_total - total) / (b.own_steps - counted))
    steps = [b.step_seconds for b in beats if b.step_seconds > 0]
    return {"segment": segment, "time": round(now, 1), "ranks": len(beats), "step": max((b.step for b in beats),
            default=0), "step_seconds": round(statistics.median(steps), 4) if steps else 0.0,
            "compute_seconds": round(statistics.median(own), 4) if own else 0.0}  # fmt: skip


def speed_interval(beats: list[Beat]) -> float:
    """Seconds between two speed summaries: ``WINDOW_STEPS`` steps, at least ``SPEED_SECONDS`` (a few small
    files a minute on the shared filesystem for real step times)."""
    steps = [b.step_seconds for b in beats if b.step_seconds > 0]
    return max(SPEED_SECONDS, WINDOW_STEPS * statistics.median(steps)) if steps else SPEED_SECONDS


def slow_nodes(speeds: Mapping[str, Mapping[str, Any]], margin: float) -> dict[str, float]:
    """Node → its compute time ÷ the median of the other nodes', for nodes slower than that by over ``margin``;
    pure. A node without a measure (DeepSpeed, no step yet) is neither judged nor a yardstick."""
    compute = {n: float(s["compute_seconds"]) for n, s in speeds.items() if s.get("compute_seconds")}
    out = {}
    for node, seconds in compute.items():
        others = [v for n, v in compute.items() if n != node]
        ratio = seconds / statistics.median(others) if others else 1.0
        if ratio > 1 + margin:
            out[node] = round(ratio, 2)
    return out


def window_median(seen: list[tuple[Any, int, float]], since: int) -> float:
    """The median own time per step of the summaries after step ``since``, once they reach back that far
    (0.0 until then, or without a measure): one odd window neither names a node nor clears one; pure."""
    if not seen or seen[0][1] > since:
        return 0.0
    values = [own for _, step, own in seen if step > since and own > 0]
    return round(statistics.median(values), 4) if values else 0.0


def stack_key(dump: str) -> str:
    """A short id of a py-spy dump that is equal for equal stacks (pids, thread ids and addresses removed)."""
    lines = [line for line in dump.splitlines() if not line.startswith(("Process ", "Python v"))]
    text = re.sub(r"\b(Thread|pid:?)\s*(0x[0-9a-fA-F]+|\d+)", r"\1", "\n".join(lines)).strip()
    return hashlib.sha1(text.encode()).hexdigest()[:8] if text else "no-stack"


def suspects(reports: Mapping[str, Mapping[str, Any]], nodes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The ranks (with their node) that differ from the rest, most telling first; pure.

    In order: ranks stopped (process state T: SIGSTOP, a debugger) — the rest only wait for them; nodes
    whose agent wrote no report (the node itself is stuck); ranks behind the others' step; ranks whose
    stack is shared by fewer ranks than the most common one.
    """
    ranks = [(node, r) for node, report in sorted(reports.items()) for r in report.get("ranks", [])]
    stopped = [_named(n, r, "stopped (process state T: SIGSTOP or a debugger)") for n, r in ranks
               if r.get("state") in ("T", "t")]  # fmt: skip
    if stopped:
        return stopped
    missing = [{"node": n, "rank": None, "why": "its agent wrote no report (the node may be stuck)"}
               for n in nodes if n not in reports]  # fmt: skip
    if missing:
        return missing
    steps = [r["step"] for _, r in ranks]
    if steps and min(steps) < max(steps):
        return [_named(n, r, f"at step {r['step']}, the others at up to {max(steps)}") for n, r in ranks
                if r["step"] == min(steps)]  # fmt: skip
    groups = Counter(r.get("stack", "") for _, r in ranks)
    if len(groups) > 1:
        most = groups.most_common(1)[0][1]
        return [_named(n, r, f"its stack differs from {most} other rank(s)") for n, r in ranks
                if groups[r.get("stack", "")] < most]  # fmt: skip
    return []


def _named(node: str, rank: Mapping[str, Any], why: str) -> dict[str, Any]:
    return {"node": node, "rank": rank["rank"], "step": rank["step"], "phase": rank["phase"], "why": why}


def process_state(pid: int, published: float | None = None) -> str:
    """``/proc/PID/stat``'s state letter (R running, S sleeping, D disk wait, T stopped…), '' if gone — or, with
    ``published`` (a beat's time), if PID is a process that started after it: the rank is gone and its pid was
    reused (a heartbeat file left by an earlier segment's rank on this node must never get a stranger killed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if published is not None and _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK") > published + 2:
            return ""
        return fields[0]
    except (OSError, IndexError, ValueError):
        return ""


def _boot_time() -> float:
    """When this machine booted (``/proc/stat``'s btime), for processes' start times."""
    with open("/proc/stat") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime ")))


def py_spy() -> str | None:
    """py-spy beside this python (the job's environment), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


def dump_stack(pid: int) -> str:
    """py-spy's dump of every thread of ``pid``, without stopping it (``--nonblocking``: works on a stopped one)."""
    tool = py_spy()
    if tool is None:
        return "(py-spy is not installed in the job's environment: pip install py-spy)"
    try:
        proc = subprocess.run([tool, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(py-spy failed: {e})"
    return proc.stdout if proc.returncode == 0 else f"(py-spy exit {proc.returncode}: {proc.stderr.strip()})"


def heartbeat_root(env: Mapping[str, str]) -> Path:
    """The job's heartbeat folder in node-local shared memory (``/dev/shm``, else the temp directory)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return Path(base) / f"hpcft-{env.get('SLURM_JOB_ID') or os.getpid()}"


class Watchdog:
    """Watches this node's ranks in a thread of ``hpcft node`` while the launcher runs (or of ``hpcft node-watch``
    on the nodes where a head-node launcher starts the ranks over ssh: ``watch_only``)."""

    def __init__(self, run: Path, spec: JobSpec, env: Mapping[str, str], watch_only: bool = False) -> None:
        self.run, self.spec, self.env, self.watch_only = run, spec, env, watch_only
        self.node = node_name(env)
        cluster = ClusterEnv.from_mapping(env)
        alone = shape_of(spec.launch.launcher) == "per_rank"  # no hpcft node on any node: watchers only
        self.first, self.nodes = cluster.node_rank == 0 and (alone or not watch_only), cluster.hosts
        self.root = heartbeat_root(env)
        self.folder = heartbeat.node_dir(self.root, self.node)
        self._stop = threading.Event()
        self._handled: set[int] = set()  # ranks already killed for a hang (until they are gone)
        self._answered: set[str] = set()  # hang episodes whose stack request this agent has seen
        self.segment = lifecycle.segment(env)
        self._last_speed = 0.0
        self._own: dict[int, tuple[int, float, int]] = {}  # rank → (pid, own total, own steps) at the last summary
        self._seen: dict[str, list[tuple[Any, int, float]]] = {}  # node 0: node → its summaries (time, step, own)
        self._named: set[str] = set()  # node 0: stragglers already recorded in this segment
        self._thread = threading.Thread(target=self._loop, name="hpcft-watchdog", daemon=True)

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where this node's ranks publish: ranks started over ssh (pdsh, mpirun) know only the hostname, and
        where it is not SLURM's name for the node they publish under it."""
        host = self.folder.parent / socket.gethostname()
        return (self.folder,) if host == self.folder else (self.folder, host)

    def ranks_env(self) -> dict[str, str]:
        """What the ranks need to publish here and to let this agent read their stacks."""
        return {heartbeat.ENV: str(self.root), heartbeat.AGENT_ENV: str(os.getpid())}

    def start(self) -> None:
        for folder in self.folders:
            if not self.watch_only:  # a watcher may start after the ranks it watches: it keeps their files
                shutil.rmtree(folder, ignore_errors=True)  # an earlier segment's ranks on this node
            folder.mkdir(parents=True, exist_ok=True)
            store.write_atomic(folder / heartbeat.AGENT_FILE, f"{os.getpid()}\n")
        self._thread.start()

    def stop(self) -> None:
        """End the watchdog; a hang being recorded finishes first (``gather`` ends at once when told)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=GATHER_SECONDS + 10)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # the job's folder, once no node of it on this machine uses it

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.check(time.time())
            except Exception as e:  # the watchdog must never take the job down
                print(f"hpcft node {self.node}: watchdog error: {e!r}", flush=True)

    def check(self, now: float) -> dict[str, Any] | None:
        """Judge the live ranks once; on a hang report, kill, and (node 0) record. The event, if any."""
        beats = [b for folder in self.folders for b in heartbeat.read_node(folder)
                 if b.pid not in self._handled and process_state(b.pid, b.time) not in ("", "Z")]  # fmt: skip
        if beats and now - self._last_speed >= speed_interval(beats):
            self._last_speed = now
            health.write_node_speed(self.run, self.node, node_speed(beats, self._own, self.segment, now))
            self._own = {b.rank: (b.pid, b.own_total, b.own_steps) for b in beats}
            if self.first:
                self.judge_speeds(now)
        if beats and now - min(b.time for b in beats) >= QUIET_SECONDS and not self._stop.is_set():
            self.answer_request(beats, now)  # a hang elsewhere stops these ranks within a step: only then look
        beats = [b for b in beats if b.pid not in self._handled]
        rules = Rules.of(self.spec, self._save_seconds() if any(b.phase == "save" for b in beats) else None)
        late = overdue(beats, now, rules)
        if not late or self._stop.is_set():
            return None
        return self.handle(beats, late, now, rules)

    def answer_request(self, beats: list[Beat], now: float) -> None:
        """Another node's agent found a hang: report this node's ranks (stacks taken while they still stand
        where the hang left them), then kill them — the launcher restarts every rank anyway."""
        episode = health.stacks_requested(self.run, self.segment)  # one small read a second, where one exists
        if episode is None or episode in self._answered:
            return
        self._answered.add(episode)
        job = self.env.get("SLURM_JOB_ID", "local")
        if episode != health.episode(self.run, self.segment, job) or self.node in health.read_node_reports(
                self.run, episode):  # fmt: skip
            return  # an earlier start's request (the ranks restarted since), or answered already
        print(f"hpcft node {self.node}: another node found a hang: taking this node's stacks", flush=True)
        self.report_and_kill(beats, now, episode)

    def report_and_kill(self, beats: list[Beat], now: float, episode: str, wait: float = 0.0) -> Path:
        """Write this node's report, wait (up to ``wait`` s) for the other nodes', then SIGKILL the ranks."""
        report, stacks = self.report(beats, now)
        folder = health.write_node_report(self.run, episode, self.node, report, stacks)
        deadline = time.monotonic() + wait
        while len(health.read_node_reports(self.run, episode)) < len(self.nodes) and time.monotonic() < deadline:
            if self._stop.wait(0.2):
                break
        for b in beats:
            self._handled.add(b.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(b.pid, signal.SIGKILL)  # a stopped process dies too; the launcher restarts the ranks
        return folder

    def handle(self, beats: list[Beat], late: list[Beat], now: float, rules: Rules) -> dict[str, Any] | None:
        episode = health.episode(self.run, self.segment, self.env.get("SLURM_JOB_ID", "local"))
        oldest = min(late, key=lambda b: b.time)
        print(f"hpcft node {self.node}: rank(s) {', '.join(str(b.rank) for b in late)} silent for "
              f"{now - oldest.time:.0f} s (allowed {allowance(oldest, rules):.0f} s in phase {oldest.phase}): "
              "taking every node's stacks, then restarting every rank", flush=True)  # fmt: skip
        if len(self.nodes) > 1:
            health.request_stacks(self.run, self.segment, episode)
            self._answered.add(episode)
        # Nothing is killed until every node has taken its stacks (or REQUEST_SECONDS passed): a killed rank
        # ends its peers' collectives, and their stacks would show the error, not the hang.
        folder = self.report_and_kill(beats, now, episode, wait=REQUEST_SECONDS if len(self.nodes) > 1 else 0)
        if not health.claim_episode(self.run, episode):
            return None  # another node's agent saw it first and records it
        event = self.gather(episode, folder, oldest, now, rules)
        named = [s["node"] for s in event["suspects"]]
        lemons.record(self.run.parent, named, f"hang at step {event['step']}", self.run.name)
        print(f"hpcft node {self.node}: {health.describe(event)}", flush=True)
        return event

    def report(self, beats: list[Beat], now: float) -> tuple[dict[str, Any], str]:
        """This node's ranks (state, step, phase, silence, stack id) and their stacks grouped by identical stack."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            dumps = list(pool.map(dump_stack, [b.pid for b in beats]))
        ranks, groups = [], {}
        for b, dump in zip(beats, dumps, strict=True):
            key = stack_key(dump)
            groups.setdefault(key, (dump, []))[1].append(b.rank)
            ranks.append({"rank": b.rank, "pid": b.pid, "step": b.step, "phase": b.phase, "state": process_state(b.pid),
                          "silent": round(now - b.time, 1), "stack": key})  # fmt: skip
        text = "".join(f"=== stack {key}: rank(s) {', '.join(map(str, rs))} on {self.node} ===\n{dump}\n"
                       for key, (dump, rs) in groups.items())  # fmt: skip
        return {"node": self.node, "time": store.now_iso(), "ranks": ranks}, text

    def gather(self, episode: str, folder: Path, oldest: Beat, now: float, rules: Rules) -> dict[str, Any]:
        """Record the ``hang`` event at once from the reports written so far, then wait (bounded) for the other
        nodes' reports and update its suspects as they come. At once, because the restart may finish the job
        (and end this agent) before a node whose ranks died of the hang's side effects ever reports."""
        action, why = self._recovery()
        event = {
            "kind": "hang", "action": action, "job": self.env.get("SLURM_JOB_ID", "local"),
            "restart": int(self.env.get("SLURM_RESTART_COUNT") or 0), "episode": episode, "step": oldest.step,
            "phase": oldest.phase, "since": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(oldest.time)),
            "silent": round(now - oldest.time), "allowed": round(allowance(oldest, rules)),
            "stacks": str(folder.relative_to(self.run)),
            "reason": f"no progress past the allowance: {why}",
        }  # fmt: skip
        deadline, seen = time.monotonic() + GATHER_SECONDS, None
        while True:
            reports = health.read_node_reports(self.run, episode)
            if sorted(reports) != seen:
                seen = sorted(reports)
                event["suspects"] = suspects(reports, self.nodes)
                health.record_event(self.run, event)  # replaces this episode's event: one per hang
            if len(reports) >= len(self.nodes) or time.monotonic() >= deadline or self._stop.wait(1):
                return event

    def judge_speeds(self, now: float) -> list[dict[str, Any]]:
        """Node 0: name the nodes slow over the last ``run.straggler_steps`` steps (event ``straggler``).

        Each node's summaries are kept; a node is judged on the median of those covering the last
        ``straggler_steps`` steps (``window_median``)."""
        if self.spec.run.straggler_margin is None:
            return []  # off by default: node speeds are shown, nobody is named (README: why)
        fresh = now - 60  # a node that stopped writing for a minute (gone, or an earlier segment's) is not judged
        speeds = {n: v for n, v in health.read_node_speeds(self.run).items()
                  if v.get("segment") == self.segment and float(v.get("time", 0)) > fresh}  # fmt: skip
        steps = self.spec.run.straggler_steps
        for node, v in speeds.items():
            seen = self._seen.setdefault(node, [])
            if seen and int(v.get("step", 0)) < seen[-1][1]:
                seen.clear()  # the ranks restarted from an earlier checkpoint: a new history
            if not seen or seen[-1][0] != v.get("time"):
                seen.append((v.get("time"), int(v.get("step", 0)), float(v.get("compute_seconds") or 0)))
                del seen[:-100]
        step = max((int(v.get("step", 0)) for v in speeds.values()), default=0)
        means = {n: {"compute_seconds": window_median(self._seen[n], step - steps)} for n in speeds}
        slow = slow_nodes(means, self.spec.run.straggler_margin)
        events = []
        for node in sorted(set(slow) - self._named):
            self._named.add(node)
            others = [v["compute_seconds"] for n, v in means.items() if n != node and v["compute_seconds"]]
            event = {"kind": "straggler", "action": "flag", "job": self.env.get("SLURM_JOB_ID", "local"),
                     "restart": int(self.env.get("SLURM_RESTART_COUNT") or 0), "node": node, "ratio": slow[node],
                     "compute_seconds": means[node]["compute_seconds"], "others_seconds": statistics.median(others),
                     "since_step": step - steps, "step": step,
                     "reason": f"{node} takes {slow[node]}× as long per step as the other nodes "
                               f"over steps {step - steps}–{step}: every rank waits for it"}  # fmt: skip
            health.record_event(self.run, event)
            lemons.record(self.run.parent, [node], f"straggler ({slow[node]}× slower)", self.run.name)
            print(f"hpcft node {self.node}: straggler: {event['reason']}", flush=True)
            events.append(event)
        return events

    def _recovery(self) -> tuple[str, str]:
        """(action, why) of what follows the kill: a restart in the job where its launcher allows one, else the
        job ends and after-job requeues it (both within ``run.max_failures``)."""
        try:
            failures = int(store.read_state(self.run).get("failures", 0))
        except Exception:
            failures = 0
        restarts = in_job_restarts(self.spec, len(self.nodes), failures)
        if restarts.by and restarts.count:  # with none left the killed ranks end the job
            return "restart", "every rank restarted inside the job from the newest checkpoint"
        return "requeue", "every rank killed; the job ends and is requeued from the newest checkpoint"

    def _save_seconds(self) -> float | None:
        try:
            return store.read_state(self.run).get("last_save_seconds")
        except Exception:
            return None
