"""Imports one way (DESIGN.md rule 13): no cycle in src/webmodels/ and servers/, the core never imports an
engine, and nothing but loadtest/ imports Locust.

The graph is read with `ast`, not by importing: every `import`/`from … import` anywhere in a module counts —
inside a function, under `if TYPE_CHECKING:`, in a `try:` — since a cycle hidden in a function is still a
cycle (it only moves the failure from import time to the first call). `src/webmodels/servers` is a symlink
to `servers/`: those modules are the package `webmodels.servers` (`servers.x` is the same module).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"webmodels": ROOT / "src" / "webmodels", "webmodels.servers": ROOT / "servers"}
ENGINES = "webmodels.servers"
# May import an engine: the composition root (it picks the model's module) and the bench (it starts servers).
COMPOSITION = ("webmodels.cli", "webmodels.bench")
LOCUST_HOME = ROOT / "loadtest"
SKIP = {"__pycache__", ".venv", ".git", "build", "node_modules"}  # not the project's own code


def python_files(root: Path) -> list[Path]:
    """The .py files under ROOT, not following symlinks (src/webmodels/servers is servers/, walked once)."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.endswith(".egg-info"))
        out += [Path(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


def module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def modules() -> dict[str, Path]:
    """Every module of the two trees by its dotted name."""
    return {module_name(pkg, root, path): path for pkg, root in PACKAGES.items() for path in python_files(root)}


def normalize(name: str) -> str:
    return "webmodels." + name if name == "servers" or name.startswith("servers.") else name


def imports(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """{imported module: line} of every import statement anywhere in the module NAME at PATH (absolute names).

    `from P import x` names the module P.x when there is one, else P itself (x is a name defined in P).
    """
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.setdefault(normalize(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up LEVEL - 1 more
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = normalize(node.module or "")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.setdefault(sub if sub in known else target, node.lineno)
    return out


def graph() -> dict[str, dict[str, int]]:
    """{module: {module of ours it imports: line}}."""
    mods = modules()
    known = set(mods)
    return {name: {m: line for m, line in imports(name, path, known).items() if m in known and m != name}
            for name, path in mods.items()}


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
                found.append(cycle_in(set(component), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def cycle_in(component: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A closed path through the first module of COMPONENT (breadth-first: the shortest)."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def describe(path: list[str], edges: dict[str, dict[str, int]]) -> str:
    return " → ".join(f"{a} (line {edges[a][b]})" for a, b in zip(path, path[1:])) + f" → {path[-1]}"


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert "webmodels.app" in edges and "webmodels.servers.prefork" in edges  # the walk found both trees
    found = cycles(edges)
    assert not found, "import cycles:\n  " + "\n  ".join(describe(c, edges) for c in found)


def test_the_core_never_imports_an_engine():
    edges = graph()
    bad = [f"{mod} imports {dep} (line {line})" for mod, deps in sorted(edges.items()) for dep, line in deps.items()
           if (dep == ENGINES or dep.startswith(ENGINES + "."))
           and not mod.startswith(ENGINES) and not any(mod == c or mod.startswith(c + ".") for c in COMPOSITION)]
    assert not bad, "the core imports an engine (only cli.py and the bench may):\n  " + "\n  ".join(bad)


def test_only_loadtest_imports_locust():
    """Locust monkey-patches the whole interpreter with gevent: never in a server, the core or a test process."""
    bad = []
    for path in python_files(ROOT):
        rel = path.relative_to(ROOT)
        if path.is_relative_to(LOCUST_HOME):
            continue
        for name, line in imports(path.stem, path, set()).items():
            if name == "locust" or name.startswith("locust."):
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_walk_sees_imports_hidden_in_functions(tmp_path):
    """The checks above can fail: a function-level import that closes a circle is found and named."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    (tmp_path / "__init__.py").write_text("")
    known = {"p", "p.a", "p.b"}
    edges = {m: {d: n for d, n in imports(m, tmp_path / f"{m.split('.')[-1] if m != 'p' else '__init__'}.py",
                                          known).items() if d in known and d != m} for m in known}
    (found,) = cycles(edges)
    assert describe(found, edges) == "p.a (line 1) → p.b (line 2) → p.a"
