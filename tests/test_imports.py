"""The import graph, derived from the sources: no cycles, and every import runs down the layer
order docs/architecture.md states (the page and the code cannot drift apart: the order is read
from the page).

Every import counts, the ones inside functions too: a lazy import that climbs a layer is the
same knot as a top-level one, only hidden. Imports under `if TYPE_CHECKING:` are annotations,
never run, and are left out.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"mdbpy": ROOT / "mdbpy", "mdbpy_commands": ROOT / "commands"}
UNIT_ALIASES = {"mdbpy": "api", "mdbpy.__main__": "cli"}  # the package's face is the API


def modules() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [pkg, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking_only(tree) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it, TYPE_CHECKING blocks left
    out), each named by the longest module name it resolves to."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_only(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[:len(name.split(".")) - node.level + is_pkg]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack, on, out = [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def layers() -> list[set[str]]:
    """The layer order from docs/architecture.md's diagram: `a, b  ->  c  ->  ...`."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```\n(.*?)\n```", text, re.S).group(1)
    return [{u.strip() for u in part.split(",")} for part in block.split("->")]


def unit(module: str) -> str:
    if module in UNIT_ALIASES:
        return UNIT_ALIASES[module]
    if module.startswith("mdbpy_commands"):
        return "commands"
    return module.split(".")[1]


def test_the_import_graph_has_no_cycle():
    graph = imports(modules())
    assert cycles(graph) == []


def test_every_import_runs_down_the_layers_the_architecture_page_states():
    mods = modules()
    order = layers()
    rank = {u: i for i, group in enumerate(order) for u in group}
    units = {unit(m) for m in mods}
    assert units - rank.keys() == set(), "units the architecture page does not place"
    against = sorted(f"{m} ({unit(m)}) imports {t} ({unit(t)})"
                     for m, ts in imports(mods).items() for t in ts
                     if rank[unit(t)] > rank[unit(m)])
    assert against == []


def test_the_checker_sees_lazy_imports_and_cycles():
    """The graph is not vacuous: a function-level import is an edge, and a cycle is found."""
    graph = imports(modules())
    assert "mdbpy.heap.leaks" in graph["mdbpy_commands.core.heap"]  # imported in a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
