"""The import graph of the project's packages (engine, indexer, localizer, eval), read with `ast`.

Rule: an edge A -> B is any `import B` / `from B import x` in A's source at module level or inside a
function or method (a lazy import still ties A to B: `engine.home` <-> `engine.search` was a cycle of two
function-level imports). Imports under `if TYPE_CHECKING:` are left out: they never run. `from P import m`
of a submodule m counts as an edge to `P.m`; an import names the deepest project module it reaches
(`import engine.corpus.store` -> `engine.corpus.store`); parent packages imported on the way do not count.

Asserted: no cycle among the project's modules, and the layering: `engine.corpus` imports no other part of
the project; `indexer` and `localizer` import only `engine.corpus` and themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "indexer", "localizer", "eval")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The deepest project module that `name` (a dotted import target) is or lies in, else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.update(m for a in child.names if (m := _project_module(a.name)))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for a in child.names:
                    target = _project_module(f"{base}.{a.name}") if f"{base}.{a.name}" in MODULES else None
                    target = target or _project_module(base)
                    if target:
                        out.add(target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_walk_sees_the_project():
    assert {"engine.search", "engine.home", "indexer.build", "indexer.stages", "localizer.infer",
            "eval.metrics", "engine.corpus.store"} <= set(MODULES)
    assert "indexer.index" in GRAPH["engine.search"]  # a function-level import is an edge
    assert "indexer.manifest" in GRAPH["indexer.stages"]  # a module-level one too


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_layering():
    bad = []
    for m, deps in GRAPH.items():
        if m.startswith("engine.corpus"):
            bad += [(m, d) for d in deps if not d.startswith("engine.corpus")]
        elif m.split(".")[0] in ("indexer", "localizer"):
            own = m.split(".")[0]
            bad += [(m, d) for d in deps if not (d.startswith(own) or d.startswith("engine.corpus"))]
    assert bad == []
