"""Render a hyperparameter study: its ``result.json`` section, CSVs and the terminal table. Computes nothing.

``result.json`` of ``prunescope hparams`` (``command: "hparams"``) holds the model and
dataset specs and an ``hparams`` section, :meth:`HparamsResult.to_dict`::

    {"settings", "space", "search": {"method", "trials": [{"number", "state", "value", "epochs", "params",
                                                          "intermediate"}], "best", "best_value", "epochs_spent"},
     "importance": {knob: share}, "grid": {"axes", "values", "base"}, "seeds", "temperature", "units",
     "landscapes": [{"degree": {"level", "label", "removed", "checkpoint", "allocation", "one_shot_val_accuracy",
                                "macs_fraction"},
                     "values": [seed][axis 0][axis 1]…, "mean": [axis 0][axis 1]…,
                     "shift": {"distance" | "regret" | "rank": {"mean", "std", "floor", "significant", "values"},
                               "displacement" | "importance": {axis: {…same…}}}}],
     "verdict": {"holds_until", "first_failure", "moves_first": {"axis", "degree", "direction", "by", "unit"},
                 "sentence", "reduction", "advice": [{…as moves_first…}], "answer"}}

Accuracies, regrets and distances are fractions (regret 0.01 = one point); displacements are
in the axis' unit (decades on a log axis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from prunescope.io import write_csv, write_json
from prunescope.report.html import write_html
from prunescope.report.schema import document
from prunescope.report.tables import listing_table


def hparams_document(result: Any, prunable: dict | None = None) -> dict[str, Any]:
    """The result document of a :class:`~prunescope.hparams.HparamsResult` (with the model's prunable share)."""
    extra = {} if prunable is None else {"prunable": prunable}
    return document("hparams", result.settings, model=result.model_spec, dataset=result.dataset_spec, **extra,
                    hparams=result.to_dict(), verdict=[result.verdict["sentence"]])


def write_result(out: Path, result: Any, prunable: dict | None = None) -> dict[str, Any]:
    """``result.json``, ``report.html``, ``landscapes.csv`` and ``shift.csv`` of an ``HparamsResult`` in ``out``."""
    doc = hparams_document(result, prunable)
    write_json(out / "result.json", doc)
    write_csv(out / "landscapes.csv", result.landscape_rows())
    write_csv(out / "shift.csv", result.shift_rows())
    write_html(out, doc)
    return doc


def _judged(judged: dict[str, Any], scale: float = 100, digits: int = 2) -> str:
    mark = " *" if judged["significant"] else ""
    mean, std, floor = (judged[key] * scale for key in ("mean", "std", "floor"))
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({floor:.{digits}f}){mark}"


def shift_table(section: dict[str, Any]) -> Table:
    """Per degree of the ``hparams`` section: one-shot and best recovered val accuracy, distance, regret and
    rank agreement against their floors."""
    rows = []
    for ls in section["landscapes"]:
        degree, shift = ls["degree"], ls["shift"]
        best = max(max(_flat(ls["mean"])), 0.0)
        rows.append([degree["label"], f"{degree['removed']:.0%}", f"{degree['one_shot_val_accuracy']:.2%}",
                     f"{best:.2%}", _judged(shift["distance"], 1, 3), _judged(shift["regret"]),
                     _judged(shift["rank"], 1, 2)])
    axes = " × ".join(section["grid"]["axes"])
    title = (f"landscape shift over {axes} ({len(section['seeds'])} seeds; mean ± sd over seed pairs (noise floor), "
             "* beyond the floor)")
    return listing_table(title, ["degree", "removed", "one-shot val", "best recovered val", "W1 distance",
                                 "regret pts", "weighted tau"], rows)


def _flat(values: Any) -> list[float]:
    if isinstance(values, list):
        return [v for item in values for v in _flat(item)]
    return [float(values)]
