"""Print the import cycles among ``mobike_vici`` modules, and the modules over a line budget.

Reads the sources with ``ast`` (nothing is imported): an edge for every ``import`` or
``from ... import`` of a ``mobike_vici`` module, wherever it sits (inside a function or
under ``if TYPE_CHECKING:`` too: a deferred import still ties the two modules together).
``from pkg import name`` counts as an import of ``pkg.name`` when that is a module.

    python3 scripts/import_cycles.py [--max-lines N]

Exit status 1 when a cycle (or, with ``--max-lines``, a module over N lines) is found.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mobike_vici"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    prefix = ".".join(base[:len(base) - node.level])
    return f"{prefix}.{node.module}" if node.module else prefix


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            here = f"{module}.__init__" if is_package else module
            target = _resolve(here, node)
            # ``from pkg import mod`` imports the module; ``from pkg import name`` the package
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            # the longest known module the name starts with
            parts = name.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != module:
                out.add(".".join(parts))
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return sorted(found)


def long_modules(limit: int, root: Path = ROOT) -> list[tuple[str, int]]:
    """Modules over ``limit`` lines, longest first."""
    sizes = [(name, len(path.read_text().splitlines())) for name, path in modules(root).items()]
    return sorted(((n, size) for n, size in sizes if size > limit), key=lambda x: -x[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-lines", type=int, default=None)
    args = parser.parse_args(argv)
    bad = 0
    for component in cycles(graph()):
        print("cycle: " + " <-> ".join(component))
        bad += 1
    if args.max_lines is not None:
        for name, size in long_modules(args.max_lines):
            print(f"long: {name} {size} lines")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
