"""A scan's output directory: ``scan.json`` (curves + where they came from), ``scan.csv``,
``plots/curves.png`` and the Optuna journal ``study.journal`` that makes the scan resumable.

Read here (:func:`load_scan`); written by :func:`prunescope.report.tables.save_scan` (the output layer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.io import read_json
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


def load_scan(directory: str | Path) -> ScanFile:
    """Read ``directory/scan.json``; a missing or damaged file is a one-line error."""
    path = Path(directory) / SCAN_FILE
    if not path.is_file():
        raise UsageError(f"no scan in {directory}: run prunescope scan --out {directory} first")
    # A NaN in measured curves is damage, not data.
    doc = read_json(path, str(path), finite=True, hint="run the scan again")
    try:
        return ScanFile(Curves.from_dict(doc["curves"]), doc.get("checkpoint"), doc["fingerprint"], doc["settings"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{path} is damaged ({type(error).__name__}: {error}); run the scan again") from None
