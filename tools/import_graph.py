"""Measure featstore's architecture: import cycles, imports that run up the layer order, SQL outside the catalog.

    python tools/import_graph.py [ROOT]

Every `import` counts, at module level or inside a function. Prints the facts and exits 1 if any is not zero.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

# Lowest layer first: a module may import its own layer or a lower one, never a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "probes",
        "featstore.errors",
        "featstore.bounded",
        "featstore.progress",
        "featstore.digests",
        "featstore.version",
        "featstore.sizes",
    ),
    ("featstore.store",),
    ("featstore.project",),
    ("featstore.catalog",),
    ("featstore.session", "featstore.cluster"),
    ("featstore.datasets",),
    ("featstore.extraction",),
    ("featstore.views",),
    ("featstore.probing",),
    ("featstore.report", "featstore.verify"),
    ("featstore.api",),
    ("featstore.cli", "featstore"),  # the package itself re-exports the API
)
SQL_HOME = ("featstore.catalog",)  # the only package that may hold SQL (user SQL passes through its safe_sql)
SQL = re.compile(
    r"\b(SELECT|INSERT INTO|DELETE FROM|UPDATE \w+ SET|CREATE (TABLE|VIEW|INDEX|SEQUENCE)|DROP TABLE|ALTER TABLE)\b"
)


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted([*root.glob("featstore/**/*.py"), *root.glob("probes/**/*.py")]):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def layer(module: str) -> int:
    best, rank = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank < 0:
        raise SystemExit(f"{module} is in no layer: add it to LAYERS")
    return rank


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def main(root: Path) -> int:
    mods = modules(root)
    edges = imports(mods)
    loops = cycles(edges)
    upward = sorted((a, b) for a, targets in edges.items() for b in targets if layer(b) > layer(a))
    sql = [
        (str(path.relative_to(root)), number)
        for name, path in mods.items()
        if not name.startswith(SQL_HOME)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    print(f"modules: {len(mods)}")
    print(f"import cycles: {len(loops)}")
    for group in loops:
        print("   ", " <-> ".join(group))
    print(f"imports running up the layers: {len(upward)}")
    for low_module, high_module in upward:
        print(f"    {low_module} -> {high_module}")
    print(f"lines with SQL outside featstore/catalog: {len(sql)}")
    for file, number in sql:
        print(f"    {file}:{number}")
    return 1 if loops or upward or sql else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
