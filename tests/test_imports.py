"""Imports go one way (DESIGN rule 13): no cycle among the modules of src/webmodels and servers/.

The graph is read from the source (ast), every import counted wherever it sits — an import inside a function is
how a cycle hides, not how it goes away. A package's own `__init__` importing its children by name at run time
(the scenario registry) is not seen, and is not a cycle of the kind this guards against.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# Cycles another branch is removing, each named once; a name that no longer cycles fails the test too, so this
# list only ever shrinks. app ↔ metrics: metrics reads the route table from app (the metrics branch hands it over).
KNOWN = {("webmodels.app", "webmodels.metrics")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of MODULES that PATH imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import webmodels.bench.kit` names the module; a symbol's parent is it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    # servers/ is webmodels.servers, a symlink under src/ (which rglob does not follow)
    files = sorted({*(SRC / "webmodels").rglob("*.py"), *(SRC / "webmodels" / "servers").rglob("*.py")})
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

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
                found.add(tuple(sorted(component)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_function_level_imports_and_the_servers() -> None:
    g = graph()
    assert "webmodels.servers.prefork" in g and "webmodels.exitcodes" in g["webmodels.servers.prefork"]
    assert "webmodels.promlab" in g["webmodels.supervisor"]  # a top-level import
    assert "webmodels.bench.main" in g["webmodels.cli"]  # inside cmd_bench
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}


def test_no_import_cycle_in_src_and_servers() -> None:
    found = cycles(graph())
    assert found - KNOWN == set(), f"import cycles: {sorted(found - KNOWN)}"
    assert KNOWN <= found, f"no longer a cycle, take it off KNOWN: {sorted(KNOWN - found)}"
