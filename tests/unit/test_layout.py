"""The package's layers: imports point down only (method, data ← inference ← runtime ← sweep), no
import cycle anywhere (imports inside functions count), short modules, a small top level, and the
method and inference layers import without Ray, DeepSpeed or MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cascade_dist"
LAYERS = {"method": 0, "data": 1, "inference": 2, "runtime": 3, "sweep": 4}
"""Rank of each layer: a module may import its own layer and those of lower rank. The top-level
modules (the façade: `cascade_dist`, `.train`, `.predict`, `.models`) may import any layer and
none may import them."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every cascade_dist module that `name` imports, at any depth of its code (lazy imports too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` names a module or its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down_the_layers():
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            if layer(target) is None:  # the façade
                if layer(name) is not None:
                    wrong.append(f"{name} imports the top-level {target}")
            elif layer(name) is not None and LAYERS[layer(target)] > LAYERS[layer(name)]:
                wrong.append(f"{name} ({layer(name)}) imports {target} ({layer(target)}), a higher layer")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_lazy_imports_included():
    """Tarjan's strongly connected components over every import, at module level or inside a function."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_graph_sees_lazy_imports():
    """The check above can fail: a function-level import is an edge (runtime.worker imports tracking lazily)."""
    assert "cascade_dist.runtime.tracking" in GRAPH["cascade_dist.runtime.worker"]
    assert "cascade_dist.method.models.cascade" in GRAPH["cascade_dist.method.models"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 400, f"{MODULES[name]} has {lines} lines"


def test_top_level_is_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_method_and_inference_import_without_the_runtime_stack():
    """A fresh interpreter imports every module of the method and inference layers (and the data
    layer they read from): Ray, DeepSpeed and MLflow stay unimported."""
    names = [n for n in MODULES if layer(n) in ("method", "data", "inference")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in ('ray', 'deepspeed', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert len(names) > 15
