"""A scan's output directory: ``scan.json`` (curves + where they came from), ``scan.csv``,
``plots/curves.png`` and the Optuna journal ``study.journal`` that makes the scan resumable."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.io import write_csv, write_json
from prunescope.plots import curves_plot
from prunescope.report import document
from prunescope.scan.identity import model_fingerprint
from prunescope.targets import find_targets

SCAN_FILE = "scan.json"
JOURNAL_FILE = "study.journal"


@dataclass(frozen=True)
class ScanFile:
    """A saved scan: its curves, the checkpoint it scanned and that model's fingerprint."""

    curves: Curves
    checkpoint: str | None
    fingerprint: str
    settings: dict[str, Any]

    def check_model(self, model: nn.Module, where: Path) -> None:
        """Refuse to use these curves for another model (other weights or layers)."""
        if model_fingerprint(model, find_targets(model)) != self.fingerprint:
            raise UsageError(f"the scan in {where} belongs to another model; scan this checkpoint first")


def save_scan(
    out: Path,
    curves: Curves,
    *,
    model: nn.Module,
    checkpoint: str | None,
    model_spec: dict,
    dataset_spec: dict,
    settings: dict[str, Any],
) -> None:
    fingerprint = model_fingerprint(model, find_targets(model))
    doc = document(
        "scan", settings, model=model_spec, dataset=dataset_spec, checkpoint=checkpoint, fingerprint=fingerprint,
        curves=curves.to_dict(),
    )
    write_json(out / SCAN_FILE, doc)
    rows = [
        {"target": name, "sparsity": p.sparsity, curves.metric: p.value, "low": p.low, "high": p.high, "n": p.n,
         "drop": curves.dense_at(p.n).value - p.value}
        for name, curve in curves.curves.items()
        for p in curve.sorted_points()
    ]
    write_csv(out / "scan.csv", rows)
    curves_plot(curves, out / "plots" / "curves.png", tolerance=settings.get("tolerance"))


def load_scan(directory: str | Path) -> ScanFile:
    """Read ``directory/scan.json``; a missing or damaged file is a one-line error."""
    path = Path(directory) / SCAN_FILE
    if not path.is_file():
        raise UsageError(f"no scan in {directory}: run prunescope scan --out {directory} first")
    try:
        doc = json.loads(path.read_text())
        return ScanFile(Curves.from_dict(doc["curves"]), doc.get("checkpoint"), doc["fingerprint"], doc["settings"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path} is damaged ({type(error).__name__}: {error}); run the scan again") from None
