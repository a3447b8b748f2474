"""The house reads as its data flow: no import cycles, heavy libraries only where ranks run, small parts.

The import graph is read from the source with ``ast`` (every import, also those inside functions;
not those under ``if TYPE_CHECKING:``, which never run), so a cycle that only a rare code path would
hit is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "hpcft"
HEAVY = ("torch", "transformers", "deepspeed", "datasets", "peft", "accelerate", "trl", "bitsandbytes")
# Where torch & co. may be imported: the ranks' package and the doctor's probe (it measures torch).
HEAVY_ALLOWED = ("hpcft.train", "hpcft.tools.doctor_probe", "hpcft.tools.doctor_fs")
# What a rank must never load: the planner, the launchers, the backends, sbatch templates, the CLI and ops.
NOT_ON_RANKS = (
    "hpcft.plan.plan",
    "hpcft.plan.pipeline",
    "hpcft.plan.memory",
    "hpcft.plan.resume",
    "hpcft.launchers.torchrun",
    "hpcft.launchers.deepspeed",
    "hpcft.launchers.accelerate",
    "hpcft.launchers.srun",
    "hpcft.backends.sbatch",
    "hpcft.backends.local",
    "hpcft.backends.submitit",
    "hpcft.backends.actions",
    "hpcft.slurm.script",
    "hpcft.slurm.client",
    "hpcft.cli",
    "hpcft.ops",
    "hpcft.tools",
    "hpcft.node",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports (hpcft modules resolved to files; others by top-level name)."""
    tree = ast.parse(MODULES[name].read_text())
    skip = _type_checking_blocks(tree)
    is_pkg = MODULES[name].name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(parent[: len(parent) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return out


GRAPH = {name: {m for m in imports_of(name) if m in MODULES and m != name} for name in MODULES}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one module (or a self-loop) are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH[m]
    return seen


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_hpcft():
    assert strongly_connected(GRAPH) == []


def test_heavy_libraries_only_where_ranks_run():
    offenders = {
        name: sorted(m for m in imports_of(name) if m.split(".")[0] in HEAVY)
        for name in MODULES
        if not name.startswith(HEAVY_ALLOWED)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ranks_never_import_the_planner():
    loaded = closure("hpcft.train.main") | closure("hpcft.train.export")
    assert sorted(m for m in loaded if m.startswith(NOT_ON_RANKS)) == []


def test_top_level_shows_the_flow():
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "errors.py"]
    folders = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(["spec", "plan", "slurm", "backends", "launchers", "node", "rundir", "ops", "tools",
                              "train", "cli", "remote"])  # fmt: skip


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > 450:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def test_per_step_callbacks_never_copy_a_device_tensor_to_the_host():
    """What runs at every step end (preemption agreement, metrics, the HF integration) must not stall the
    accelerator's stream: no ``.item()`` there (#17). The MoE aux loss is copied to the host once per
    logging step, in ``RouterAuxLoss.take``, not per step."""
    per_step = ("train/preemption.py", "train/metrics.py", "train/hf_integration.py", "train/heartbeat.py")
    for rel in per_step:
        tree = ast.parse((PKG / rel).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
        assert not [c.lineno for c in calls if c.func.attr == "item"], f"{rel} calls .item()"
