"""The import graph of both packages has no cycle, between modules or between folders, and the exporter's
folders import one way (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pgexport": ROOT / "pgexport", "pgexport_runtime": ROOT / "runtimes/python/pgexport_runtime"}


def modules(top: str) -> dict[str, Path]:
    out = {}
    for path in PACKAGES[top].rglob("*.py"):
        parts = path.relative_to(PACKAGES[top].parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(top: str) -> dict[str, set[str]]:
    """module -> the modules of its own package it imports (anywhere in the file: lazy imports count)."""
    mods = modules(top)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def folder(module: str, mods: dict[str, Path]) -> str:
    """A module's folder (pgexport.quant), or the module itself for files at a package's root."""
    parts = module.split(".")
    if mods[module].name == "__init__.py" or len(parts) == 2:
        return module
    return ".".join(parts[:2])


def folder_edges(top: str) -> dict[str, set[str]]:
    mods = modules(top)
    out: dict[str, set[str]] = {}
    for a, targets in imports(top).items():
        out.setdefault(folder(a, mods), set()).update(folder(b, mods) for b in targets if folder(b, mods) != folder(a, mods))
    return out


def test_no_cycle_between_modules():
    for top in PACKAGES:
        assert cycles(imports(top)) == [], top


def test_no_cycle_between_folders():
    for top in PACKAGES:
        assert cycles(folder_edges(top)) == [], top


ORDER = ("source", "export", "verify", "quant", "build", "bench")  # each folder imports only those before it


def test_folders_import_only_those_before_them():
    edges = folder_edges("pgexport")
    for i, name in enumerate(ORDER):
        later = {f"pgexport.{n}" for n in ORDER[i + 1:]}
        assert not edges.get(f"pgexport.{name}", set()) & later, name


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
