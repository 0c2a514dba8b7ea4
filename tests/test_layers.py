"""The package's layers: imports point down only (workflow → study → library), output is read by workflows.

``python tests/test_layers.py`` prints every upward import and their count.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prunescope"

# Rank of each module (by its dotted name's longest matching prefix). A module may import its own
# rank or lower. The library has two floors: what a model and its data are (data, models, measure,
# evaluate, curves) below what prunes them (units, criteria, masks). The output package sits apart
# at the top, beside the workflows, and only workflows (``pipeline``, ``cli``) may import it.
BASE, INPUTS, LIBRARY, STUDY, WORKFLOW = 0, 1, 2, 3, 4
OUTPUT = WORKFLOW
LAYERS: dict[str, int] = {
    "prunescope": BASE,  # __init__: the version
    "prunescope.__main__": WORKFLOW,  # python -m prunescope
    "prunescope.errors": BASE,
    "prunescope.device": BASE,
    "prunescope.io": BASE,  # atomic writes, used by checkpoints as by reports
    "prunescope.trust": BASE,  # which factories named in a file may be imported
    "prunescope.data": INPUTS,
    "prunescope.models": INPUTS,
    "prunescope.measure": INPUTS,
    "prunescope.evaluate": INPUTS,
    "prunescope.curves": INPUTS,
    "prunescope.scores": INPUTS,  # what decisions optimise (a score, higher is better) and how it is shown
    "prunescope.checkpoint": LIBRARY,
    "prunescope.targets": LIBRARY,
    "prunescope.units": LIBRARY,
    "prunescope.blocks": LIBRARY,  # repeated blocks of a network, exact counts spread within them
    "prunescope.prunable": LIBRARY,  # the prunable share of a model, and what is left out
    "prunescope.criteria": LIBRARY,
    "prunescope.masks": LIBRARY,
    "prunescope.patterns": LIBRARY,  # N:M masks
    "prunescope.calibration": LIBRARY,  # a layer's inputs on calibration data
    "prunescope.reconstruct": LIBRARY,  # layer-wise OBS reconstruction
    # groups, importance, allocation, masking (pruning) and latency tables: the engine behind channel units
    "prunescope.structured": LIBRARY,
    "prunescope.structured.export": STUDY,
    "prunescope.structured.baselines": STUDY,
    "prunescope.scan": STUDY,
    "prunescope.trials": STUDY,
    "prunescope.pick": STUDY,
    "prunescope.apply": STUDY,
    "prunescope.train": STUDY,
    "prunescope.hparams": STUDY,
    "prunescope.regimes": STUDY,
    "prunescope.pipeline": WORKFLOW,
    "prunescope.cli": WORKFLOW,
    "prunescope.report": OUTPUT,
}
OUTPUTS = ("prunescope.report",)


def layer(module: str) -> tuple[str, int]:
    """The longest prefix of ``module`` in :data:`LAYERS` and its rank; KeyError for an unplaced module."""
    parts = module.split(".")
    for end in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise KeyError(module)


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(module: str, name: str) -> str:
    """``from module import name``: the submodule ``module.name`` when there is one, else ``module``."""
    return f"{module}.{name}" if _is_module(f"{module}.{name}") else module


def imports() -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` of every prunescope import in the package, typing-only and
    function-local ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("prunescope"):
                found += [(importer, _imported(node.module, a.name), node.lineno) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(importer, a.name, node.lineno) for a in node.names if a.name.startswith("prunescope")]
    return found


def circles(found: list[tuple[str, str, int]]) -> list[list[str]]:
    """The import circles between modules: strongly connected components of more than one module
    (Tarjan's algorithm), each sorted. A package's ``__init__`` counts as the module of its name."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in found:
        if importer != imported:
            graph.setdefault(importer, set()).add(imported)
            graph.setdefault(imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def upward(found: list[tuple[str, str, int]]) -> list[str]:
    """Imports from a lower layer into a higher one, and imports of an output module by anything but a workflow."""
    wrong = []
    for importer, imported, line in found:
        (source, low), (target, high) = layer(importer), layer(imported)
        reads_output = target in OUTPUTS and source not in OUTPUTS and low != WORKFLOW
        if high > low or reads_output:
            wrong.append(f"{importer}:{line} imports {imported} ({source} rank {low} → {target} rank {high})")
    return wrong


def test_every_module_is_placed_in_a_layer() -> None:
    unplaced = []
    for importer, imported, _ in imports():
        for module in (importer, imported):
            try:
                layer(module)
            except KeyError:
                unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS: {sorted(set(unplaced))}"


def test_imports_point_down() -> None:
    assert upward(imports()) == []


def test_no_import_circles() -> None:
    assert circles(imports()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    found = [("a", "b", 1), ("b", "c", 1), ("c", "a", 1), ("c", "d", 1), ("d", "d", 1)]
    assert circles(found) == [["a", "b", "c"]]


if __name__ == "__main__":
    found = imports()
    wrong = upward(found)
    loops = circles(found)
    for line in wrong + [" ↔ ".join(loop) for loop in loops]:
        print(line)
    print(f"{len(wrong)} upward of {len(found)} prunescope imports; {len(loops)} import circles", file=sys.stderr)
    sys.exit(1 if wrong or loops else 0)
