"""The shape of the code, checked: no import cycle inside mlplat/ (imports inside functions count), no module over
MAX_MODULE_LINES lines, no private name used from another mlplat module, no exported notebook cell over
MAX_EXPORTED_CELL_LINES lines. Each failure names what to change: the cycle and its import lines, the module, the
notebook cell."""
import ast
import json
import re
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "mlplat"
NOTEBOOKS = REPO / "notebooks"
GENERATED = {PACKAGE / "_modidx.py"}           # nbdev's index; mlplat/labextension is built JavaScript, not Python
MAX_MODULE_LINES = 450
MAX_EXPORTED_CELL_LINES = 60
EXPORT = re.compile(r"^\s*#\|\s*export[si]?\b")   # nbdev's export, exports and exporti
DIRECTIVE = re.compile(r"^\s*#\|")


# ---- the package as modules and imports --------------------------------------------------------
def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    "Every module of the package by dotted name (a package is its __init__.py)."
    mods = {}
    for f in sorted(package.rglob("*.py")):
        parts = f.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def in_type_checking(tree: ast.AST) -> set[int]:
    "ids of the import nodes under `if TYPE_CHECKING:`, which never run (so they close no cycle)."
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(name: str, path: Path, mods: dict[str, Path]):
    """(module imported, import node, names taken from it) for each import of a package module in `path`, at any
    depth (functions included). `from a import b` imports a.b when that is a module, else a."""
    tree = ast.parse(path.read_text(), str(path))
    skip = in_type_checking(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    yield a.name, node, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source not in mods:
                continue
            names = [a.name for a in node.names]
            for n in names:
                target = f"{source}.{n}"
                if target in mods:
                    yield target, node, []
            taken = [n for n in names if f"{source}.{n}" not in mods]
            if taken:
                yield source, node, taken


def import_graph(package: Path = PACKAGE):
    "{module: {imported module: [(file:line, statement), ...]}} for the whole package (self-imports left out)."
    mods = module_files(package)
    graph = {m: {} for m in mods}
    for m, f in mods.items():
        for target, node, _ in imports(m, f, mods):
            if target != m:
                graph[m].setdefault(target, []).append((f"{f.relative_to(package.parent)}:{node.lineno}", ast.unparse(node)))
    return graph


def strongly_connected(graph) -> list[list[str]]:
    "Tarjan's algorithm: the groups of modules that import each other, directly or not (iterative: no recursion limit)."
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1; stack.append(nxt); on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        m = stack.pop(); on_stack.discard(m); group.append(m)
                        if m == node: break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def shortest_cycle(graph, group: list[str]) -> list[str]:
    "A shortest import cycle through the group's first module, staying inside the group: [a, b, ..., a]."
    start, members = group[0], set(group)
    paths, seen = [[start]], {start}
    while paths:
        nxt_paths = []
        for path in paths:
            for nxt in sorted(graph[path[-1]]):
                if nxt == start:
                    return path + [start]
                if nxt in members and nxt not in seen:
                    seen.add(nxt); nxt_paths.append(path + [nxt])
        paths = nxt_paths
    return group


def where(sites: list[tuple[str, str]]) -> str:
    "The first import of a module by another, and the lines of the others."
    (loc, stmt), more = sites[0], [loc.rpartition(":")[2] for loc, _ in sites[1:]]
    return f"({loc}: {stmt}" + (f"; again at line{'s' * (len(more) > 1)} {', '.join(more)}" if more else "") + ")"


def describe_cycle(graph, group: list[str]) -> str:
    cycle = shortest_cycle(graph, group)
    steps = [f"    {a} imports {b}   {where(graph[a][b])}" for a, b in zip(cycle, cycle[1:])]
    text = f"  cycle {' -> '.join(cycle)}\n" + "\n".join(steps)
    if len(group) > len(cycle) - 1:     # more modules in the knot than on this cycle: every import that ties it
        ties = [f"      {a} -> {b}   {where(graph[a][b])}" for a in group for b in sorted(graph[a]) if b in group]
        text += f"\n    the same knot holds {len(group)} modules, tied by these imports:\n" + "\n".join(ties)
    return text


def test_no_import_cycles_inside_mlplat():
    graph = import_graph()
    groups = strongly_connected(graph)
    assert not groups, (f"{len(groups)} import cycle(s) inside mlplat/ (imports inside functions count; "
                        "break each by moving what both sides need into a module both import):\n"
                        + "\n".join(describe_cycle(graph, g) for g in groups))


def write_package(root: Path, files: dict[str, str]) -> Path:
    "A made-up package `pkg` under `root` for the checkers' own tests."
    for name, code in {"pkg/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(code)
    return root / "pkg"


def test_the_cycle_finder_finds_cycles(tmp_path):
    "The checker itself: a cycle closed by a function-level relative import is found and named; d -> a is not in it."
    pkg = write_package(tmp_path, {"pkg/a.py": "from pkg import b\n", "pkg/b.py": "import pkg.sub.c\n",
                                   "pkg/sub/__init__.py": "", "pkg/sub/c.py": "def f():\n    from ..a import thing\n",
                                   "pkg/d.py": "from .a import thing\n",
                                   "pkg/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"})
    graph = import_graph(pkg)
    [group] = strongly_connected(graph)
    assert group == ["pkg.a", "pkg.b", "pkg.sub.c"]
    assert describe_cycle(graph, group).splitlines() == [
        "  cycle pkg.a -> pkg.b -> pkg.sub.c -> pkg.a",
        "    pkg.a imports pkg.b   (pkg/a.py:1: from pkg import b)",
        "    pkg.b imports pkg.sub.c   (pkg/b.py:1: import pkg.sub.c)",
        "    pkg.sub.c imports pkg.a   (pkg/sub/c.py:2: from ..a import thing)"]
    assert graph["pkg.d"] == {"pkg.a": [("pkg/d.py:1", "from .a import thing")]} and graph["pkg.e"] == {}


def test_no_module_over_the_line_limit():
    long = sorted(((len(f.read_text().splitlines()), f.relative_to(REPO)) for f in module_files().values()
                   if f not in GENERATED), reverse=True)
    over = [f"  {path}: {n} lines" for n, path in long if n > MAX_MODULE_LINES]
    assert not over, (f"{len(over)} module(s) over {MAX_MODULE_LINES} lines (split the notebook that exports it):\n"
                      + "\n".join(over))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(package: Path = PACKAGE) -> list[str]:
    "`from mlplat.x import _y`, or `m._y` on a module `m` imported from mlplat: file:line, statement, whose name."
    mods, found, root = module_files(package), [], package.parent
    for m, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        aliases = {}                                       # local name -> module, for `from mlplat.x import y`, `... as y`
        for target, node, taken in imports(m, f, mods):
            if target == m:
                continue
            for n in taken:
                if is_private(n):
                    found.append(f"  {f.relative_to(root)}:{node.lineno}: {ast.unparse(node)}   ({n} is private to {target})")
            for a in node.names if not taken else []:
                if isinstance(node, ast.ImportFrom) and f"{target.rpartition('.')[0]}.{a.name}" == target or a.asname:
                    aliases[a.asname or a.name] = target
        for node in ast.walk(tree):                        # m._y, or mlplat.x._y after `import mlplat.x`
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = aliases.get(ast.unparse(node.value), ast.unparse(node.value))
                if owner in mods and owner != m:
                    found.append(f"  {f.relative_to(root)}:{node.lineno}: {ast.unparse(node)}   ({node.attr} is private to {owner})")
    return sorted(set(found))


def test_no_private_name_from_another_module():
    found = private_uses()
    assert not found, (f"{len(found)} use(s) of another module's private name (make it public in its module, "
                       "or move the caller's need there):\n" + "\n".join(found))


def test_the_private_name_finder_finds_them(tmp_path):
    pkg = write_package(tmp_path, {"pkg/a.py": "_x = _y = _z = 1\ndef _own(): return _x\n",
                                   "pkg/b.py": "from pkg.a import _x, __doc__\n",
                                   "pkg/c.py": "from pkg import a\ndef f(): return a._y + len(a.__name__)\n",
                                   "pkg/d.py": "import pkg.a\nimport pkg.a as alias\nv = pkg.a._z + alias._z\n",
                                   "pkg/sub/__init__.py": "", "pkg/sub/e.py": "from ..a import _own\n"})
    assert private_uses(pkg) == [
        "  pkg/b.py:1: from pkg.a import _x, __doc__   (_x is private to pkg.a)",
        "  pkg/c.py:2: a._y   (_y is private to pkg.a)",
        "  pkg/d.py:3: alias._z   (_z is private to pkg.a)",
        "  pkg/d.py:3: pkg.a._z   (_z is private to pkg.a)",
        "  pkg/sub/e.py:1: from ..a import _own   (_own is private to pkg.a)"]


# ---- the notebooks -----------------------------------------------------------------------------
def exported_cells(folder: Path = NOTEBOOKS):
    "(notebook, cell number from 1, cell id, what it defines, code lines) for each exported cell of every notebook."
    for nb_path in sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts):
        cells = json.loads(nb_path.read_text())["cells"]
        for number, cell in enumerate(cells, 1):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            lines = source.splitlines()
            if cell["cell_type"] != "code" or not any(EXPORT.match(l) for l in lines):
                continue
            code = [l for l in lines if not DIRECTIVE.match(l)]
            while code and not code[-1].strip():
                code.pop()
            defines = next((m[1] for l in code if (m := re.match(r"(?:async\s+)?(?:def|class)\s+(\w+)", l))), None)
            yield nb_path.relative_to(folder.parent), number, cell.get("id"), defines, len(code)


def test_exported_notebook_cells_are_short():
    "A short exported cell, a sentence on why, then its tests: the rhythm of nbdev's and fastcore's own notebooks."
    cells = list(exported_cells())
    assert cells, f"no exported cell found under {NOTEBOOKS}"
    over = [f"  {nb} cell {number} (id {cid}{f', defines {defines}' if defines else ''}): {n} lines"
            for nb, number, cid, defines, n in sorted(cells, key=lambda c: -c[4]) if n > MAX_EXPORTED_CELL_LINES]
    assert not over, (f"{len(over)} of {len(cells)} exported cells over {MAX_EXPORTED_CELL_LINES} lines (directives "
                      "and trailing blank lines not counted; split each into smaller functions, each in its own cell "
                      "with its tests):\n" + "\n".join(over))


@pytest.mark.parametrize("source, expected", [("#| export\ndef f():\n    pass\n\n", 2), ("#|exports\nx = 1", 1),
                                              ("#| exporti\n#| hide\nclass A: pass", 1), ("#| hide\nx = 1", None)])
def test_exported_cells_are_counted_without_their_directives(tmp_path, source, expected):
    (tmp_path / "00_x.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "id": "c1", "source": source.splitlines(True)}]}))
    got = [c[4] for c in exported_cells(tmp_path)]
    assert got == ([] if expected is None else [expected])
