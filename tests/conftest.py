"""Shared fixtures and the tier rules.

Tiers: unit (pure, fast) · golden (rendered files) · cluster (real SLURM lab) · train (tiny models).
A cluster or train test whose prerequisites are missing is skipped on a developer machine but
FAILS when CI=true: CI must never pass by skipping the tiers that matter (the same for a declared
dependency a test imports: ``import_or_require``). ``--update-golden`` is refused under CI=true.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# One OpenMP thread per rank, in the tests' own processes and in every job they submit (sbatch passes the
# environment on). The lab's nodes share this machine's 2 cores with three test lanes, while a rank alone on
# its node gets accelerate's default of a thread per physical core: spinning OpenMP threads then outnumber
# the cores. Measured on the idle lab, one 2-node × 1-rank demo job of 120 steps: 35 CPU-s and 22.5 s
# without, 20 CPU-s and 14.4 s with. (torchrun sets 1 itself for two ranks per node and more.)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from the current output")


def pytest_configure(config):
    # A golden test run with --update-golden passes by writing its own expectation: never in CI.
    if IN_CI and config.getoption("--update-golden"):
        raise pytest.UsageError("--update-golden is refused under CI=true: golden files are reviewed expectations")


LAB_LANE = "tests/cluster/"  # every test that uses the SLURM lab lives here (the ``lab`` fixture)
LAB_DIR = Path(os.environ.get("SLURMLAB_DIR", "/tmp/hpcft-lab"))
# scripts/lab/sshd.sh: an ssh shim that knows the lab's keys (its sshd accepts HPCFT_TEST_*), for the launchers
# that reach the other nodes over ssh (deepspeed-pdsh, -openmpi).
LAB_SSH = str(LAB_DIR / "ssh" / "bin")
SSH_SETUP = f'launch.setup=["export PATH={LAB_SSH}:$PATH"]'


@dataclass(frozen=True)
class Lab:
    """One 2-node cluster of the lab (scripts/dev-cluster): its name, its clients' slurm.conf, its nodes."""

    name: str
    conf: Path
    nodes: tuple[str, str]

    @property
    def nodelist(self) -> str:
        """The nodes as SLURM compresses them (``node[1-2]``)."""
        return f"node[{self.nodes[0][4:]}-{self.nodes[1][4:]}]"


LABS = {"lab": Lab("lab", LAB_DIR / "etc" / "slurm.conf", ("node1", "node2")),
        "lab2": Lab("lab2", LAB_DIR / "etc" / "lab2" / "slurm.conf", ("node3", "node4")),
        "lab3": Lab("lab3", LAB_DIR / "etc" / "lab3" / "slurm.conf", ("node5", "node6"))}  # fmt: skip
# The lab tests' lanes, a cluster each, balanced by the test time the modules took in CI (the rest: lab).
# lab3's lane also runs the unit and train tests after its own (``pytest_collection_modifyitems``).
LAB_MODULES = {
    "lab2": {"test_trl", "test_launchers", "test_offload_cluster", "test_hostile_values", "test_any_trainer",
             "test_train_cluster", "test_ops", "test_fs_ops"},
    "lab3": {"test_warning_lead", "test_resize", "test_preemption_launchers", "test_shrink", "test_remote",
             "test_silent_faults"},
}  # fmt: skip
# The longest train modules first (seconds alone on an idle machine): whichever lane ends last then waits for a
# short module, not for test_zero (LPT scheduling).
TRAIN_FIRST = ("test_zero", "test_nvme_resume", "test_gpu_check", "test_hf_integration", "test_warm")


def lane_of(nodeid: str) -> str:
    """The unit of work a test belongs to: the lab cluster it runs on (``lab``, ``lab2``, ``lab3``) for a test
    on the lab, else its module."""
    module = nodeid.split("::", 1)[0]
    if not module.startswith(LAB_LANE):
        return module
    stem = Path(module).stem
    return next((lab for lab, modules in LAB_MODULES.items() if stem in modules), "lab")


def pytest_collection_modifyitems(config, items):
    """The order of ``make test``'s lanes: the lab's three lanes first (the first three units of work, one to
    each worker), then the unit modules, then the train modules, the longest first — each taken by the first
    worker with two tests or fewer left: lab3's (the shortest lab lane), and at their ends the other two."""

    def key(item) -> tuple:
        if item.nodeid.startswith(LAB_LANE):
            return (0, list(LABS).index(lane_of(item.nodeid)))
        stem = Path(item.nodeid.split("::", 1)[0]).stem
        train = item.get_closest_marker("train") is not None
        return (1, train, TRAIN_FIRST.index(stem) if train and stem in TRAIN_FIRST else len(TRAIN_FIRST))

    items.sort(key=key)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """Three lanes for ``make test`` (``pytest -n 3``): the tests on each of the lab's three clusters in a lane of
    their own, in order — the drills need their cluster's two nodes and partitions to themselves — and the unit
    and train tests after them, a module at a time (their module fixtures are built once).

    xdist's own ``--dist loadgroup`` would do it from ``xdist_group`` marks, but with pytest >= 9.2 it groups
    nothing and spreads every test over the workers (it renames node ids through a field pytest no longer
    reads: pytest-dev/pytest-xdist#1386). The lane is decided from the node id instead, here and only here,
    and the lanes keep the collection's order (not xdist's largest-first), so each lab lane takes one worker.
    """
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)

    return Lanes(config, log)


_TIERS: dict[str, dict] = {}  # tier (and "cluster lane X") → tests, seconds of test time, first start, last stop


def pytest_runtest_logreport(report):
    """Account every test's phases to its tier (tests/<tier>/...), a lab test also to its lane: ``make test``
    prints time by tier and by lab lane (what ``LAB_MODULES`` balances)."""
    parts = report.nodeid.split("/")
    names = [parts[1] if len(parts) > 2 else "other"]
    if report.nodeid.startswith(LAB_LANE):
        names.append(f"cluster lane {lane_of(report.nodeid)}")
    for name in names:
        tier = _TIERS.setdefault(name, {"tests": 0, "s": 0.0, "t0": None, "t1": None})
        tier["s"] += report.duration
        tier["tests"] += report.when == "call"
        start, stop = getattr(report, "start", None), getattr(report, "stop", None)
        if start is not None and stop is not None:
            tier["t0"] = start if tier["t0"] is None else min(tier["t0"], start)
            tier["t1"] = stop if tier["t1"] is None else max(tier["t1"], stop)


def pytest_terminal_summary(terminalreporter):
    if not _TIERS:
        return
    terminalreporter.write_sep("=", "time by tier and lab lane (they run side by side under -n)")
    for name, tier in sorted(_TIERS.items()):
        span = f", wall {(tier['t1'] - tier['t0']) / 60:.1f} min" if tier["t0"] is not None else ""
        terminalreporter.write_line(f"{name}: {tier['tests']} tests, {tier['s'] / 60:.1f} min of test time{span}")


def require(ok: bool, why: str) -> None:
    """Skip locally, fail in CI, when a tier's prerequisite is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}: this tier must run in CI", pytrace=False)
    pytest.skip(why)


def import_or_require(name: str):
    """Import module ``name`` (a declared dependency, e.g. matplotlib of the [plot] extra) and return it.

    Where it cannot be imported: skipped on a developer machine, FAILED when CI=true (``require``).
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, f"{name} cannot be imported ({e}); install the extra that declares it")
        raise  # not reached: require skips or fails


def hpcft(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would), with the test's runs dir."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpcft", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcft {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def check_golden(request, name: str, text: str) -> None:
    path = GOLDEN / name
    if request.config.getoption("--update-golden"):  # never under CI=true: pytest_configure refuses it
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run pytest --update-golden and review the diff"
    assert text == path.read_text(), f"{name} changed; review with pytest --update-golden + git diff"


def wait_until(what: str, predicate, timeout: float = 180, interval: float = 0.3):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` s."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def squeue_state(job: str) -> str:
    """``STATE REASON`` of a job (or array task) as squeue reports it ('' once squeue forgot it)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
    return out.strip()


def nodes_completing() -> list[str]:
    """The lab's nodes SLURM still tears a job down on (state COMPLETING)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if "comp" in line.split()[-1]]


def release_requeued(job: str, timeout: float = 180) -> None:
    """Wait for the requeued job to pend on SLURM's requeue hold and for its old run to be torn down on every
    node, then lift the hold (``scontrol update StartTime=now``).

    Lifting it while slurmd still tears down the previous run gets the new one killed ("Job credential
    revoked") — the race the 120 s BeginTime hold prevents; the nodes leave COMPLETING when it is over.
    """
    wait_until(f"job {job} to be requeued", lambda: squeue_state(job) == "PENDING BeginTime", timeout=timeout)
    since = time.monotonic()
    # SLURM says nothing when slurmd has let go of the old run's revoked credential (its own answer is the
    # 120 s hold): the nodes must have left COMPLETING, and the job must have pended for TEARDOWN_S.
    wait_until("the old run's teardown", lambda: not nodes_completing() and time.monotonic() - since >= TEARDOWN_S,
               timeout=120, interval=0.2)  # fmt: skip
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


TEARDOWN_S = 3  # a lift 0.3 s after the requeue got "Job credential revoked" here; 3 s held in every earlier CI run


@pytest.fixture(scope="module")
def lab(request) -> Lab:
    """The module's cluster of the lab (``lane_of``), up with its 2 nodes (make test brings the lab up).

    Every SLURM client of the module's tests — theirs, hpcft's, and in the jobs, which inherit the environment
    — reads that cluster's slurm.conf (``SLURM_CONF``) while the module runs.
    """
    cluster = LABS[lane_of(request.node.nodeid)]
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        answer = ""

        def up() -> bool:
            nonlocal answer
            try:
                out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=10)
                answer = out.stdout
            except (FileNotFoundError, subprocess.TimeoutExpired):
                answer = ""
                return False
            nodes = [line.split() for line in answer.splitlines() if line.strip()]
            # "completing": the previous module's last job is still being torn down; a job waits for it.
            usable = ("idle", "mixed", "allocated", "completing")
            return {n for n, _ in nodes} == set(cluster.nodes) and all(st in usable for _, st in nodes)

        ok = up()
        deadline = time.monotonic() + 60  # a node a drill restarted comes back within SlurmdTimeout
        while not ok and answer and time.monotonic() < deadline:
            time.sleep(1)
            ok = up()
        require(ok, f"the SLURM lab's cluster {cluster.name} is not up with {' and '.join(cluster.nodes)} "
                    f"(sinfo: {answer.strip() or 'no answer'}); run scripts/dev-cluster up")  # fmt: skip
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


@pytest.fixture(scope="session")
def train_stack() -> None:
    """torch + transformers importable (the [train] extra)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        require(False, f"the [train] extra is not installed ({e})")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory, train_stack) -> Path:
    """One demo (tiny Llama, tokenizer, data, job.yaml) for the whole session, built by the CLI."""
    d = tmp_path_factory.mktemp("demo") / "demo"
    hpcft("init-demo", str(d))
    return d


@pytest.fixture(scope="session")
def demo512(train_stack, tmp_path_factory) -> Path:
    """The 8.3M-parameter demo, built once per session: per-rank partitions above DeepSpeed's 1 MiB AIO minimum."""
    d = tmp_path_factory.mktemp("demo512") / "demo"
    hpcft("init-demo", str(d), "--hidden-size", "512")
    return d


@pytest.fixture(scope="session")
def ds_ops(train_stack) -> None:
    """DeepSpeed's JIT ops built once, serially, in the persistent cache the jobs use (make test does it first)."""
    os.environ.setdefault("HPCFT_OPS_CACHE", str(Path.home() / ".cache" / "hpcft" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "hpcft", "ops", "build"]
    subprocess.run(cmd, check=True, timeout=900, capture_output=True)


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """A fresh runs directory (on /tmp, which every lab node sees). Afterwards every job of its runs is cancelled:
    a drill that failed half-way must not leave its job holding the lane's nodes for the tests after it."""
    d = tmp_path / "runs"
    d.mkdir()
    yield d
    jobs = runs_jobs(d)
    if jobs and shutil.which("scancel"):
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)


def runs_jobs(runs: Path) -> list[str]:
    """The SLURM job ids of every run under ``runs`` (state.json's ``jobs``; local runs' ``local-PID`` left out)."""
    jobs = []
    for state in runs.glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, KeyError):
            jobs += [str(j["id"]) for j in json.loads(state.read_text()).get("jobs", [])]
    return [j for j in jobs if not j.startswith("local")]
