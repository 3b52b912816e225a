"""The package's imports point one way (DESIGN.md): cli → api → engine/evaluation →
models/losses/data/taxonomy → runtime → config/registry/errors, with no cycles. Walks every module's
runtime imports with ``ast`` (imports under ``if TYPE_CHECKING:`` do not count) and fails on any cycle
or any edge against the layering, so the shape is guarded from now on (issue 16)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import rustworkx as rx

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "imgcls"

#: a module's layer may import only from strictly lower layers (or its own package)
LAYERS = {
    "cli": 8,
    "__main__": 8,
    "api": 7,
    "export": 7,
    "engine": 6,
    "evaluation": 6,
    "runs": 5,
    "teacher": 5,
    "models": 4,
    "losses": 4,
    "data": 4,
    "taxonomy": 4,
    "runtime": 3,
    "config": 2,
    "registry": 1,
    "recipes": 1,
    "errors": 0,
    "__init__": 9,
}
#: edges that the layer numbers alone would allow but DESIGN.md forbids
FORBIDDEN = {
    ("models", "data"),
    ("models", "engine"),
    ("models", "evaluation"),
    ("evaluation", "engine"),
    ("losses", "data"),
    ("losses", "engine"),
    ("losses", "evaluation"),
}
#: imports between two packages of the same layer that are part of the design
ALLOWED_PEERS = {
    ("models", "losses"),
    ("models", "taxonomy"),
    ("losses", "taxonomy"),
    ("data", "taxonomy"),
    ("engine", "evaluation"),
    ("teacher", "runs"),
    ("__main__", "cli"),
    ("api", "export"),
}


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return out


def runtime_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = (
                    name.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else name.split(".")[: len(name.split(".")) - node.level + 1]
                )
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: runtime_imports(m, f, known) for m, f in known.items()}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    edges = graph()
    g = rx.PyDiGraph()
    index = {m: g.add_node(m) for m in edges}
    for m, targets in edges.items():
        for t in targets:
            g.add_edge(index[m], index[t], None)
    cycles = [sorted(g[n] for n in comp) for comp in rx.strongly_connected_components(g) if len(comp) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_follow_the_layering():
    wrong = []
    for m, targets in graph().items():
        a = top(m)
        for t in targets:
            b = top(t)
            if a == b or b == "__init__":
                continue
            assert a in LAYERS and b in LAYERS, f"{m} or {t} is in no layer: add it to LAYERS"
            below = LAYERS[b] < LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) in ALLOWED_PEERS)
            if not below or (a, b) in FORBIDDEN:
                wrong.append(f"{m} -> {t}")
    assert wrong == [], "imports against the layering: " + ", ".join(sorted(wrong))


def test_the_walker_sees_a_cycle_and_a_wrong_way_edge(tmp_path, monkeypatch):
    pkg = tmp_path / "imgcls"
    (pkg / "models").mkdir(parents=True)
    (pkg / "data").mkdir()
    for f in ("__init__.py", "models/__init__.py", "data/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "models" / "a.py").write_text("from imgcls.data.b import x\n")
    (pkg / "data" / "b.py").write_text("import imgcls.models.a\nx = 1\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "SRC", tmp_path)
    monkeypatch.setattr(this, "PKG", pkg)
    edges = graph()
    assert edges["imgcls.models.a"] == {"imgcls.data.b"} and edges["imgcls.data.b"] == {"imgcls.models.a"}
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match=r"imgcls\.models\.a -> imgcls\.data\.b"):
        test_imports_follow_the_layering()
