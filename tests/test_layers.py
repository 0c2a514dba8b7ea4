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
# evaluate, curves) below what prunes them (units, criteria, masks). Output modules sit apart at the
# top, beside the workflows, and only workflows may import them.
BASE, INPUTS, LIBRARY, STUDY, WORKFLOW = 0, 1, 2, 3, 4
OUTPUT = WORKFLOW
LAYERS: dict[str, int] = {
    "prunescope": BASE,  # __init__: the version
    "prunescope.errors": BASE,
    "prunescope.device": BASE,
    "prunescope.io": BASE,  # atomic writes, used by checkpoints as by reports
    "prunescope.trust": BASE,  # which factories named in a file may be imported
    "prunescope.data": INPUTS,
    "prunescope.models": INPUTS,
    "prunescope.measure": INPUTS,
    "prunescope.evaluate": INPUTS,
    "prunescope.curves": INPUTS,
    "prunescope.checkpoint": LIBRARY,
    "prunescope.targets": LIBRARY,
    "prunescope.units": LIBRARY,
    "prunescope.criteria": LIBRARY,
    "prunescope.masks": LIBRARY,
    "prunescope.calibration": LIBRARY,  # a layer's inputs on calibration data
    "prunescope.reconstruct": LIBRARY,  # layer-wise OBS reconstruction
    # groups, importance, allocation, masking (pruning) and latency tables: the engine behind channel units
    "prunescope.structured": LIBRARY,
    "prunescope.structured.export": STUDY,
    "prunescope.structured.baselines": STUDY,
    "prunescope.scan": STUDY,
    "prunescope.trials": STUDY,
    "prunescope.pick": STUDY,
    "prunescope.retrain_cv": STUDY,
    "prunescope.apply": STUDY,
    "prunescope.train": STUDY,
    "prunescope.hparams": STUDY,
    "prunescope.regimes": STUDY,
    "prunescope.pipeline": WORKFLOW,
    "prunescope.compare": WORKFLOW,
    "prunescope.sweep": WORKFLOW,
    "prunescope.cli": WORKFLOW,
    "prunescope.runconfig": WORKFLOW,
    "prunescope.prune": WORKFLOW,
    "prunescope.recovered": WORKFLOW,
    "prunescope.wrapping": WORKFLOW,  # prunescope.wrap: a model trained in Python → a checkpoint
    "prunescope.results": OUTPUT,
    "prunescope.report": OUTPUT,
    "prunescope.report_hparams": OUTPUT,
    "prunescope.html": OUTPUT,
    "prunescope.plots": OUTPUT,
    "prunescope.verdict": OUTPUT,
}
OUTPUTS = ("prunescope.report", "prunescope.report_hparams", "prunescope.html", "prunescope.plots",
           "prunescope.verdict", "prunescope.results")


def layer(module: str) -> tuple[str, int]:
    """The longest prefix of ``module`` in :data:`LAYERS` and its rank; KeyError for an unplaced module."""
    parts = module.split(".")
    if len(parts) == 2 and (parts[1].startswith("cli") or parts[1].endswith("_cli")):
        return module, WORKFLOW  # a command's own CLI module, registered from cli.py
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


def _submodule(name: str) -> str:
    """``from prunescope import name``: the module ``prunescope.name``, or the package for an attribute."""
    exists = (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()
    return f"prunescope.{name}" if exists else "prunescope"


def imports() -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` of every prunescope import in the package, typing-only ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("prunescope"):
                names = [node.module] if node.module != "prunescope" else [_submodule(a.name) for a in node.names]
                found += [(importer, name, node.lineno) for name in names]
            elif isinstance(node, ast.Import):
                found += [(importer, a.name, node.lineno) for a in node.names if a.name.startswith("prunescope")]
    return found


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


if __name__ == "__main__":
    found = imports()
    wrong = upward(found)
    print("\n".join(wrong))
    print(f"{len(wrong)} upward of {len(found)} prunescope imports", file=sys.stderr)
