"""Property-based fuzzing of every hpcft command on bad input (Hypothesis).

Shared by ``tests/unit/test_fuzz.py`` (a few thousand cases in CI) and ``benchmarks/fuzz.py`` (long runs).
The properties, for any input:

1. no traceback: the command exits 0, 1 (an ``error:`` line) or 2 (Click's usage error);
2. a rejected job writes nothing: the runs directory is exactly as before;
3. an accepted job's script keeps every ``#SBATCH`` line in sbatch's header (a value cannot end it),
   and its ``spec.yaml`` reads back;
4. a damaged run directory gives an error or a report, never a traceback, and never hides a healthy run
   beside it; a command that fails leaves the run's files as they were.

Inputs are built from the job schema (``hpcft.spec.model.field_paths``) with values drawn from hostile
strings, numbers of every size, nulls, lists and mappings, raw byte damage of the YAML text, ``-o``
overrides and the curated flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import strategies as st

from hpcft.cli import main as cli
from hpcft.spec.model import field_paths

PATHS = field_paths()
SECTIONS = ("run", "resources", "launch", "train", "train.data", "train.lora", "train.offload", "train.moe")

# Pieces of values real job files and hostile users produce: shell metacharacters, YAML look-alikes,
# sbatch's own specials (% and #), control characters, unicode, paths.
HOSTILE = (
    "a b", "'", '"', "$(touch CANARY)", "`touch CANARY`", "; touch CANARY", "${HOME}", "$HOME", "\\", "#", "%j",
    "%", "\n", "\r", "\t", "\x00", "\x1b[31m", "{", "}", "{run_dir}", "{nope}", "*", "~", "..", "/", "-", "--",
    "--x", "12:00:00", "4:00:00", "1-00:00:00", "0", "-1", "1e-4", "1e400", "nan", "null", "~", "yes", "no",
    "0x10", "0o7", "é", "\u202e", "😀", " ", "", "=", ",", "[", "]", ":", "&&", "|", ">", "<", "!",
)  # fmt: skip
hostile_text = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=6), max_size=5).map("".join)
scalars = (
    hostile_text
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 4, 8, 10**9, 2**31, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(PATHS) | st.sampled_from(SECTIONS) | hostile_text.map(lambda s: f"train.{s}")


@dataclass
class Outcome:
    """One command's result: exit code, output, and the traceback if it raised."""

    args: list[str]
    exit_code: int
    output: str
    error: str | None


def invoke(args: list[str], env: dict[str, str] | None = None) -> Outcome:
    """Run the CLI in this process, as ``hpcft ARGS`` would; a non-exit exception is kept as its traceback."""
    result = CliRunner().invoke(cli, args, env={"HPCFT_DEBUG": None, **(env or {})}, catch_exceptions=True)
    error = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        error = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(args, result.exit_code, result.output, error)


def assert_clean(out: Outcome) -> None:
    """Property 1: an exit status a user expects, an error message, no traceback."""
    assert out.error is None, f"hpcft {out.args} raised:\n{out.error}"
    assert out.exit_code in (0, 1, 2), f"hpcft {out.args} exited {out.exit_code}:\n{out.output}"
    assert "Traceback (most recent call last)" not in out.output, f"hpcft {out.args} printed a traceback"
    if out.exit_code == 1:
        assert "error:" in out.output, f"hpcft {out.args} failed without saying why:\n{out.output}"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` with its content (directories as None), for 'nothing changed' checks."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name.endswith(".lock"):
            continue  # lock files are made by readers too; they hold nothing
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out


def assert_header_intact(script: str) -> None:
    """Property 3: sbatch reads #SBATCH lines up to the first command (src/sbatch/opt.c): none may follow it."""
    lines = script.splitlines()
    first_cmd = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    late = [line for line in lines[first_cmd:] if line.startswith("#SBATCH")]
    assert not late, f"#SBATCH lines after the first command (sbatch ignores them): {late}"
    header = [line for line in lines[:first_cmd] if line.startswith("#SBATCH")]
    assert any(line.startswith("#SBATCH --nodes=") for line in header), "the header lost --nodes"


# --- the job-file fixture --------------------------------------------------------------------------

# A tiny Llama config written by hand (the planner reads config.json only; no weights are needed).
MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 256,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}  # fmt: skip


def base_job() -> dict[str, Any]:
    """A valid job (relative paths, as a user writes them)."""
    return {
        "run": {"name": "fuzz"},
        "resources": {"nodes": 1, "gpus_per_node": 2, "time": "00:30:00"},
        "launch": {"backend": "sbatch"},
        "train": {"model": "model", "data": {"train": "data/train.jsonl", "format": "alpaca"}, "max_steps": 4},
    }


def make_workdir(root: Path) -> Path:
    """A directory holding the model config and data the base job names; returns it."""
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "config.json").write_text(json.dumps(MODEL_CONFIG))
    (root / "data").mkdir(exist_ok=True)
    sample = {"instruction": "say hi", "input": "", "output": "hi"}
    (root / "data" / "train.jsonl").write_text("\n".join(json.dumps(sample) for _ in range(8)) + "\n")
    (root / "runs").mkdir(exist_ok=True)
    return root


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``a.b.c``, replacing whatever is in the way."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def delete_path(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


# Free-text fields a job may legitimately fill with anything printable: hostile but valid values must be
# accepted and reach the script quoted (the header stays intact, nothing runs).
TEXT_FIELDS = ("resources.partition", "resources.account", "resources.qos", "resources.constraint",
               "run.name", "launch.network_interface", "train.data.cache_dir", "launch.env.FUZZ_VALUE")  # fmt: skip
printable = hostile_text.map(lambda s: "".join(ch for ch in s if ch.isprintable()) or "x")
valid_hostile = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(TEXT_FIELDS), printable),
    st.tuples(st.just("set"), st.just("resources.extra_sbatch"),
              st.lists(printable.map(lambda s: f"--comment={s}"), max_size=2)),
)  # fmt: skip
# Half the mutations keep the job valid (so the accepted path is fuzzed too), half may break it anywhere.
mutation = st.one_of(valid_hostile, valid_hostile, st.tuples(st.just("set"), keys, values),
                     st.tuples(st.just("del"), keys, st.none()))  # fmt: skip


@st.composite
def job_texts(draw) -> bytes:
    """A job file: the base job with schema-guided mutations, sometimes damaged as bytes."""
    job = base_job()
    for op, key, value in draw(st.lists(mutation, min_size=1, max_size=4)):
        (set_path if op == "set" else lambda d, k, _v: delete_path(d, k))(job, key, value)
    try:
        text = yaml.safe_dump(job, allow_unicode=True).encode("utf-8", "surrogateescape")
    except (yaml.YAMLError, UnicodeEncodeError):
        text = b"run: {name: x}\n"
    damage = draw(st.sampled_from(["none"] * 6 + ["bytes", "truncate", "latin1", "indent"]))
    if damage == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "latin1":
        text = text.replace(b"fuzz", "füzz".encode("latin-1"))
    elif damage == "indent":
        text = text.replace(b"\n  ", b"\n ", 1)
    return text


override = st.tuples(keys, hostile_text | st.integers().map(str)).map(lambda kv: f"{kv[0]}={kv[1]}") | hostile_text
FLAGS = ("--nodes", "--gpus-per-node", "--zero", "--gpu-mem", "--offload", "--launcher", "--backend", "--time",
         "--partition", "--profile", "--accelerate-config", "--gpu-mem")  # fmt: skip
flag_args = st.lists(
    st.tuples(
        st.sampled_from(FLAGS),
        hostile_text | st.integers(-5, 10**12).map(str) | st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "80"]),
    ),
    max_size=3,
).map(lambda pairs: [x for pair in pairs for x in pair])


def check_job(work: Path, text: bytes, overrides: list[str], flags: list[str], command: list[str],
              also_plan: bool = True) -> Outcome:  # fmt: skip
    """Properties 1–3 for ``submit --no-submit`` (and ``plan``) of one job file."""
    job = work / "job.yaml"
    job.write_bytes(text)
    runs = work / "runs"
    before = snapshot(runs)
    args = ["job.yaml", "--runs-dir", str(runs), *(a for o in overrides for a in ("-o", o)), *flags]
    extra = ["--", *command] if command else []
    # A command line cannot hold a NUL byte (argv entries are C strings); a job file can ("\0" in YAML).
    args, extra = [a.replace("\0", "") for a in args], [a.replace("\0", "") for a in extra]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        if also_plan:
            assert_clean(invoke(["plan", *args, *extra]))
        out = invoke(["submit", *args, "--no-submit", *extra])
    finally:
        os.chdir(cwd)
    assert_clean(out)
    after = snapshot(runs)
    if out.exit_code != 0:
        assert after == before, f"a rejected job wrote files: {sorted(set(after) - set(before))}\n{out.output}"
        return out
    new = sorted({p.split("/")[0] for p in set(after) - set(before)})
    assert len(new) == 1, f"an accepted job should write one run directory, wrote {new}"
    run = runs / new[0]
    assert_header_intact((run / "job.sbatch").read_text())
    from hpcft.rundir import store

    store.load_run_spec(run)  # reads back (raises on a spec it wrote but cannot read)
    shutil.rmtree(run)
    return out


# --- damaged run directories -------------------------------------------------------------------------

RUN_FILES = ("state.json", "spec.yaml", "metrics.jsonl", "FINISHED", "FATAL", "REQUEUE", "PREEMPT", "job.sbatch",
             "checkpoints/checkpoint-2/MANIFEST.json", "checkpoints/checkpoint-2/COMPLETE",
             "checkpoints/checkpoint-2/trainer_state.json", "checkpoints/checkpoint-2", "checkpoints",
             "checkpoints/checkpoint-9/trainer_state.json", "logs", "logs/slurm-4242.out", "logs/rank-0.log",
             "ds_config.json", "RESUME_FROM")  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)


def make_run(work: Path, name: str = "fuzz") -> Path:
    """A realistic run directory (written by the real ``submit --no-submit``), with a history added."""
    job = work / "job.yaml"
    data = base_job()
    data["run"]["name"] = name
    job.write_text(yaml.safe_dump(data))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        out = invoke(["submit", "job.yaml", "--runs-dir", str(work / "runs"), "--no-submit"])
    finally:
        os.chdir(cwd)
    assert out.exit_code == 0, out.output + (out.error or "")
    (run,) = (work / "runs").iterdir()
    state = json.loads((run / "state.json").read_text())
    state["jobs"] = [{"id": "4242", "submitted": state["created"], "nodes": "node1", "restart": 0}]
    state["events"] = [{"job": "4242", "kind": "preempted", "action": "requeue", "reason": "time limit"}]
    (run / "state.json").write_text(json.dumps(state))
    lines = [{"step": s, "loss": 2.0 - s / 10, "tokens_per_s": 100.0, "time": 1.0 + s} for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    staged = run / "checkpoints" / ".staging-2"
    staged.mkdir(parents=True)
    (staged / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    from hpcft.rundir import checkpoints

    checkpoints.commit(staged, run / "checkpoints", step=2, world_size=2, zero_stage=0)
    (run / "FINISHED").write_text("3\n")
    (run / "logs" / "slurm-4242.out").write_text("hpcft: job 4242\n")
    return run


@st.composite
def damages(draw) -> tuple[str, str, bytes | Any]:
    """(file, how, what): a file of the run replaced, removed or turned into a directory."""
    name = draw(st.sampled_from(RUN_FILES))
    how = draw(st.sampled_from(["json", "bytes", "text", "truncate", "delete", "dir", "mutate"]))
    what: Any = None
    if how == "json":
        what = json.dumps(draw(json_values)).encode()
    elif how == "bytes":
        what = draw(st.binary(max_size=64))
    elif how == "text":
        what = draw(hostile_text).encode("utf-8", "surrogatepass")
    elif how == "truncate":
        what = draw(st.floats(0, 1))
    elif how == "mutate":
        what = (draw(hostile_text), draw(json_values))
    return name, how, what


def damage(run: Path, name: str, how: str, what: Any) -> None:
    """Apply one damage to ``run`` (none where an earlier damage left no room, e.g. a parent now a file)."""
    with contextlib.suppress(OSError):
        _damage(run / name, how, what)


def _damage(path: Path, how: str, what: Any) -> None:
    if how in ("delete", "dir"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if how == "dir":
            path.mkdir(parents=True, exist_ok=True)
        return
    if path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "truncate":
        old = path.read_bytes() if path.is_file() else b""
        path.write_bytes(old[: int(len(old) * what)])
    elif how == "mutate":
        key, value = what
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            data = {}
        if isinstance(data, dict):
            data[key] = value
        path.write_text(json.dumps(data))
    else:
        path.write_bytes(what)


OPS = (
    ["status"], ["status", "--json"], ["list"], ["status", "{run}"], ["status", "{run}", "--json"],
    ["logs", "{run}"], ["logs", "{run}", "--rank", "0"], ["logs", "{run}", "--node", "0"],
    ["resume", "{run}"], ["cancel", "{run}"], ["plot", "{run}", "--out", "{tmp}/loss.png"],
)  # fmt: skip


FAKE_SLURM = {
    "squeue": "exit 0",  # knows no job
    "sacct": "exit 0",
    "sbatch": "echo 'sbatch: error: Batch job submission failed: refused by the fuzzing stand-in' >&2; exit 1",
    "scancel": "echo 'scancel: error: Kill job error on job id 4242: Invalid job id specified' >&2; exit 1",
}


def fake_slurm(work: Path) -> Path:
    """A PATH directory of stand-ins for SLURM's commands (only for driving the readers, not as evidence)."""
    bin_dir = work / "fake-slurm-bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir(parents=True)
        for name, body in FAKE_SLURM.items():
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bin_dir / name).chmod(0o755)
    return bin_dir


def check_damaged(template: Path, healthy: Path, work: Path, damage_list, op: list[str]) -> Outcome:
    """Property 4: one command over a runs dir holding a damaged run and a healthy one."""
    runs = work / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    run = runs / template.name
    shutil.copytree(template, run, symlinks=True)
    shutil.copytree(healthy, runs / healthy.name, symlinks=True)
    for d in damage_list:
        damage(run, *d)
    before = snapshot(run)
    args = [a.format(run=str(run), tmp=str(work)) for a in op]
    # SLURM's commands are stand-ins that know no job and refuse every submission: the fuzzing reaches every
    # reader of the run directory, and nothing can reach a real cluster or signal a real process.
    env = {"PATH": str(fake_slurm(work)), "HPCFT_RUNS_DIR": str(runs)}
    out = invoke([*args, "--runs-dir", str(runs)], env=env)
    assert_clean(out)
    if out.exit_code != 0:
        assert snapshot(run) == before, f"a failed `{' '.join(op)}` changed the run's files:\n{out.output}"
    if op in (["status"], ["list"], ["status", "--json"]):
        assert healthy.name in out.output, f"a damaged run hid the healthy one:\n{out.output}"
    return out
