"""Imports run one way, down (docs/architecture.md): an AST walk over src/fpn, no package imported.

Every ``import`` and ``from ... import`` of a module counts, at the top of the file or inside a function (a
function-local import must not hide a cycle or a dependency that runs up). The checks:

* every fpn module an import names exists;
* no two modules import each other, directly or round a loop;
* each module's unit (``fpn.<unit>...``: a top-level module or package) sits on a floor of :data:`FLOORS`,
  and imports only units of the floors below its own, or its own unit. Units on one floor are peers: neither
  imports the other (backbones and pyramids, say).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top: (floor, its units, the rule its units follow). docs/architecture.md draws the same picture.
FLOORS: list[tuple[str, frozenset[str], str]] = [
    ("errors", frozenset({"errors"}), "the FpnError family: imports nothing of fpn"),
    ("ground", frozenset({"levels", "io", "device", "version"}), "level contract, safe I/O, device: only errors"),
    ("config", frozenset({"config"}), "typed dataclass configs"),
    ("presets", frozenset({"presets"}), "named model configs"),
    ("parts", frozenset({"layers", "ops", "data"}), "network blocks, box geometry, datasets: peers"),
    ("pathways", frozenset({"backbones", "pyramids"}), "bottom-up and top-down pathways: peers over layers"),
    ("detection", frozenset({"detection"}), "detectors and their checkpoints"),
    (
        "engine",
        frozenset({"engine", "export"}),
        "training, evaluation, inference over files | ONNX export and its onnxruntime runner: peers, no viz, no cli",
    ),
    ("viz", frozenset({"viz"}), "pictures"),
    ("bench", frozenset({"bench"}), "the instruments of fpn bench"),
    ("compare", frozenset({"compare"}), "the designs side by side"),
    ("cli", frozenset({"cli"}), "one module per fpn subcommand: nothing below imports it"),
    ("entry", frozenset({"fpn", "__main__"}), "the package's public API (fpn/__init__.py) and python -m fpn"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the fpn package by dotted name (packages under their own name)."""
    return {module_name(path): path for path in sorted((SRC / "fpn").rglob("*.py")) if "__pycache__" not in path.parts}


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """``(imported fpn module, line)`` for every import of an fpn module in module ``name``, however nested."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "fpn" or alias.name.startswith("fpn."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level - 1 packages
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not (base == "fpn" or base.startswith("fpn.")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules() else base), node.lineno  # `from fpn.x import y`: module y, or x


@cache
def graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: first line importing it}; self-imports left out."""
    edges: dict[str, dict[str, int]] = {}
    for name in modules():
        edges[name] = {}
        for target, line in imports_of(name):
            if target != name:
                edges[name].setdefault(target, line)
    return edges


def unit(name: str) -> str:
    """``fpn.detection.rpn`` -> ``detection``; the package itself is ``fpn``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "fpn"


def floor_of(unit_name: str) -> int | None:
    return next((i for i, (_, units, _) in enumerate(FLOORS) if unit_name in units), None)


def describe(unit_name: str) -> str:
    index = floor_of(unit_name)
    return f"floor {index} '{FLOORS[index][0]}'" if index is not None else "no floor"


def where(importer: str, imported: str) -> str:
    return f"{modules()[importer].relative_to(SRC.parent)}:{graph()[importer][imported]}"


def missing_imports() -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph().items() for b in targets if b not in modules()}


def upward_imports() -> set[tuple[str, str]]:
    """Imports of a unit on the importer's floor (a peer) or above it."""
    bad = set()
    for importer, targets in graph().items():
        for imported in targets:
            if imported not in modules() or unit(imported) == unit(importer):
                continue
            low, high = floor_of(unit(imported)), floor_of(unit(importer))
            if low is not None and high is not None and low >= high:
                bad.add((importer, imported))
    return bad


def cycles() -> list[list[str]]:
    """One loop per strongly connected group of modules (Tarjan), as ``[a, b, ..., a]``."""
    edges = {a: [b for b in targets if b in modules()] for a, targets in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the longest import chain (a few dozen)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    loops = []
    for group in groups:  # a shortest way from the group's first module back to itself, inside the group
        start, members = group[0], set(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in [b for a in frontier for b in edges[a]]:
            nxt_frontier = []
            for a in frontier:
                for b in edges[a]:
                    if b in members and b not in paths:
                        paths[b] = paths[a] + [b]
                        nxt_frontier.append(b)
            frontier = nxt_frontier
        last = next(a for a in frontier if start in edges[a])
        loops.append(paths[last] + [start])
    return loops


# ------------------------------------------------------------------------------------------------ tests


def test_the_walk_sees_the_package():
    names = modules()
    assert {"fpn", "fpn.errors", "fpn.io", "fpn.layers.norms", "fpn.detection.checkpoint", "fpn.cli"} <= set(names)
    assert ("fpn.layers.norms", "fpn.layers.conv_pointwise") in {(a, b) for a in graph() for b in graph()[a]}


def test_every_imported_fpn_module_exists():
    found = sorted(missing_imports())
    assert not found, "imports of fpn modules that do not exist:\n" + "\n".join(
        f"  {where(a, b)}: {a} imports {b}" for a, b in found
    )


def test_no_import_cycles():
    loops = cycles()
    assert not loops, "import cycles (each module reaches itself through these imports):\n" + "\n".join(
        "  " + " -> ".join(loop) for loop in loops
    )


def test_every_unit_has_a_floor():
    homeless = sorted({unit(name) for name in modules()} - {u for _, units, _ in FLOORS for u in units})
    assert not homeless, f"units of src/fpn on no floor of tests/test_architecture.py FLOORS: {homeless}"


def test_imports_run_down():
    found = sorted(upward_imports())
    assert not found, "imports that run up the floors or across peers (a module imports only below its floor):\n" + (
        "\n".join(f"  {where(a, b)}: {a} ({describe(unit(a))}) imports {b} ({describe(unit(b))})" for a, b in found)
    )


def test_io_and_errors_know_nothing_of_the_package():
    errors = sorted(graph()["fpn.errors"])
    assert not errors, f"fpn.errors imports {errors}: it must import nothing of fpn"
    extra = sorted(set(graph()["fpn.io"]) - {"fpn.errors"})
    assert not extra, f"fpn.io imports {extra}: it must import nothing of fpn but fpn.errors"
