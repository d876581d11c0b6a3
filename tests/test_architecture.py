"""The shape of the code: layers that import only downwards, and no import circle anywhere.

Every import counts: module level, inside functions (lazy) and under ``TYPE_CHECKING``. The
layers, lowest first (README "How the code is laid out"):

foundation ← backends ← runtime ← runtime events ← cluster transport ← app ← HTTP edge
← operations and test tools ← CLI and the suites (``duro.consistency``, ``duro.bench``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "duro", "backends": "duro.backends", "consistency_tests": "duro.consistency",
            "bench": "duro.bench"}

LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "clock", "deadlines", "stats", "ids", "keys", "codec", "calls",
                    "config", "cluster_auth", "settings", "signals", "console", "tracing"}),
    ("backends", {"backends"}),
    ("runtime", {"host", "storage", "objects", "committer", "instance", "namespace"}),
    ("runtime events", {"fetch", "websockets"}),
    ("cluster transport", {"transport"}),
    ("app", {"app"}),
    ("HTTP edge", {"server", "listener"}),
    ("operations and test tools", {"", "ops", "dump", "migrate", "metrics", "testing"}),
    ("CLI and suites", {"cli", "serve_cli", "ops_cli", "consistency", "bench"}),
]
HTTP_LIBRARIES = ("starlette", "uvicorn", "aiohttp", "httpx", "websockets")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module *name* imports anywhere in its source (lazy and TYPE_CHECKING included)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = {f"{module}.{a.name}" for a in node.names}
            out.update(names)
            if not names & MODULES.keys():  # ``from pkg import submodule`` imports the submodule
                out.add(module)
    return out


GRAPH = {m: {i for i in _imports(m, p) if i in MODULES} - {m} for m, p in MODULES.items()}


def _layer(module: str) -> int:
    rest = module.removeprefix("duro").removeprefix(".")
    head = rest.split(".")[0]
    for n, (_, names) in enumerate(LAYERS):
        if head in names:
            return n
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README section)")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_graph_is_read() -> None:
    """The parser sees the imports it must (so the checks below cannot pass on an empty graph)."""
    assert len(MODULES) > 80
    assert {"duro.host", "duro.storage", "duro.signals"} <= GRAPH["duro.instance"]
    assert "duro.consistency.history" in GRAPH["duro.consistency.checker"]


def test_no_import_circle_anywhere() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a circle put into a copy of the graph is found."""
    graph = {m: set(d) for m, d in GRAPH.items()}
    graph["duro.errors"].add("duro.instance")
    assert any({"duro.errors", "duro.instance"} <= set(c) for c in _cycles(graph))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_own_layer_or_lower(module: str) -> None:
    mine = _layer(module)
    upward = sorted(i for i in GRAPH[module] if _layer(i) > mine)
    assert upward == [], (f"{module} ({LAYERS[mine][0]}) imports from higher layers: "
                          + ", ".join(f"{u} ({LAYERS[_layer(u)][0]})" for u in upward))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) <= 2))
def test_the_runtime_never_names_http(module: str) -> None:
    names = _imports(module, MODULES[module])
    assert not [n for n in names if n.split(".")[0] in HTTP_LIBRARIES]


def test_no_lazy_import_of_a_project_module_in_the_runtime() -> None:
    """Lazy imports are for optional dependencies only: the runtime's own imports sit at the top
    of each module (or under ``TYPE_CHECKING``)."""
    lazy = []
    for module, path in MODULES.items():
        if _layer(module) > 5:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("duro"):
                        lazy.append(f"{module}:{node.lineno} {node.module}")
    assert lazy == []
