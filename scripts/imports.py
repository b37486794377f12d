#!/usr/bin/env python3
"""Draw the import graph of `app/` and `bench/` by floors: imports back up a floor, cycles.

    python scripts/imports.py          # the drawing; exit status 1 if anything is wrong

Every `import` and `from … import` counts, wherever it stands: in a function, or under
`TYPE_CHECKING` (a type named from a floor above is still knowledge of that floor). Standard
library `ast` only, so it runs before the venv exists. `tests/test_imports.py` asserts its
verdict, so an import up a floor or a cycle cannot come back unnoticed.

A floor may import any floor below it and, sideways, another package of its own floor (a cycle
between them is still a cycle). The floors, lowest first, are the table below: a module belongs
to the longest name in it that its own name starts with.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "bench")

FLOORS: list[tuple[str, list[str]]] = [
    ("vocabulary", ["app.core", "app.settings", "app.errors"]),
    ("storage and tools", ["app.storage", "app.dev"]),
    ("upstream", ["app.upstream"]),
    ("services", ["app.ops", "app.agents"]),
    ("billing", ["app.billing"]),
    ("admission", ["app.admission"]),
    ("replies", ["app.replies", "app.jobs"]),
    ("http", ["app.http"]),
    ("the app", ["app.main"]),
    ("commands", ["app.commands", "app.__main__", "app"]),
    ("benchmarks", ["bench"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` (at `path`) imports."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from app.billing import reports` imports the module app.billing.reports.
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            # `import a.b.c` runs a/__init__ and a/b/__init__ too, but those are the package
            # itself: count the deepest module named.
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def unit_of(module: str) -> tuple[int, str]:
    """The floor (its index) and the table's name `module` belongs to."""
    best: tuple[int, str] | None = None
    for index, (_, names) in enumerate(FLOORS):
        for unit in names:
            if (module == unit or module.startswith(unit + ".")) and (
                best is None or len(unit) > len(best[1])
            ):
                best = (index, unit)
    if best is None:
        raise SystemExit(f"{module} is on no floor: add it to FLOORS in {__file__}")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


@dataclass
class Drawing:
    units: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    upward: list[tuple[str, str]] = field(default_factory=list)
    module_cycles: list[list[str]] = field(default_factory=list)
    unit_cycles: list[list[str]] = field(default_factory=list)
    module_count: int = 0


def draw() -> Drawing:
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    drawing = Drawing(module_count=len(known))
    unit_graph: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        source_floor, source_unit = unit_of(source)
        unit_graph[source_unit]
        for target in targets:
            target_floor, target_unit = unit_of(target)
            if target_unit != source_unit:
                unit_graph[source_unit].add(target_unit)
                drawing.units[source_unit].add(target_unit)
            if target_floor > source_floor:
                drawing.upward.append((source, target))
    drawing.upward.sort()
    drawing.module_cycles = cycles(graph)
    drawing.unit_cycles = cycles(unit_graph)
    return drawing


def report(drawing: Drawing) -> str:
    lines = []
    for index, (title, names) in reversed(list(enumerate(FLOORS))):
        lines.append(f"floor {index}: {title}")
        for unit in names:
            below = sorted(drawing.units.get(unit, ()), key=lambda u: (-unit_of(u)[0], u))
            lines.append(f"    {unit:<14} -> {', '.join(below) if below else '(nothing of ours)'}")
    lines.append("")
    lines.append(f"modules: {drawing.module_count}")
    lines.append(f"imports back up a floor: {len(drawing.upward)}")
    lines.extend(f"    {source} -> {target}" for source, target in drawing.upward)
    lines.append(f"cycles between modules: {len(drawing.module_cycles)}")
    lines.extend(f"    {' <-> '.join(cycle)}" for cycle in drawing.module_cycles)
    lines.append(f"cycles between packages: {len(drawing.unit_cycles)}")
    lines.extend(f"    {' <-> '.join(cycle)}" for cycle in drawing.unit_cycles)
    return "\n".join(lines)


def main() -> int:
    drawing = draw()
    print(report(drawing))
    return 1 if drawing.upward or drawing.module_cycles or drawing.unit_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
