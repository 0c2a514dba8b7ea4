"""Render results: the JSON document, CSV rows and Rich tables. Computes nothing.

``result.json`` schema (version 1)::

    {"schema": "prunescope.result", "version": 1, "command": "sweep" | "run" | "train",
     "created": ISO-8601 UTC time, "prunescope_version": "...",
     "settings": {...options of the command...},
     "model": model spec, "dataset": dataset spec,
     "training": {"history": [epoch records]}                  # when a model was trained
     "sweep": {"criterion", "allocation", "split", "targets": [...],
               "points": [{"sparsity", "achieved_sparsity", "allocation": {target: s},
                           "metrics": {"accuracy", "macro_f1", "loss", "n", "accuracy_ci", "extra"},
                           "params_total", "params_nonzero", "bytes_dense", "bytes_sparse",
                           "macs_dense", "macs_effective", "latency_ms", "latency_p10_ms",
                           "latency_p90_ms", "throughput"}]}}

Fractions (sparsity, accuracy, F1) are in [0, 1]; loss in nats; MACs per sample; latency
in milliseconds at batch 1; throughput in samples per second at batch 256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from prunescope import __version__
from prunescope.io import write_csv, write_json
from prunescope.sweep import SweepResult

SCHEMA = "prunescope.result"
SCHEMA_VERSION = 1


def document(command: str, settings: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """The top-level result document of one command."""
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prunescope_version": __version__,
        "settings": settings,
        **sections,
    }


def sweep_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One flat CSV row per sparsity level."""
    rows = []
    for p in result.points:
        low, high = p.metrics.accuracy_ci
        rows.append(
            {
                "sparsity": p.sparsity,
                "achieved_sparsity": round(p.achieved_sparsity, 6),
                "accuracy": p.metrics.accuracy,
                "accuracy_ci_low": low,
                "accuracy_ci_high": high,
                "macro_f1": p.metrics.macro_f1,
                "loss": p.metrics.loss,
                "params_total": p.params_total,
                "params_nonzero": p.params_nonzero,
                "bytes_dense": p.bytes_dense,
                "bytes_sparse": p.bytes_sparse,
                "macs_dense": p.macs_dense,
                "macs_effective": p.macs_effective,
                "latency_ms": p.latency_ms,
                "throughput": p.throughput,
                **{f"sparsity[{name}]": s for name, s in p.allocation.items()},
            }
        )
    return rows


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def sweep_table(result: SweepResult, title: str | None = None) -> Table:
    """One row per sparsity: metrics on the split, with the accuracy's 95% interval, and measurements."""
    dense = result.dense
    table = Table(title=title or f"{result.split} metrics vs sparsity ({result.allocation} allocation, "
                  f"{result.criterion} criterion)")
    columns = ("sparsity", "accuracy", "95% CI", "Δ pts", "macro-F1", "loss", "non-zero", "KiB",
               "MACs", "ms b=1", "samples/s")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for p in result.points:
        m = p.metrics
        table.add_row(
            f"{p.achieved_sparsity:.1%}",
            f"{m.accuracy:.2%}",
            f"{m.accuracy_ci[0]:.1%}–{m.accuracy_ci[1]:.1%}",
            f"{(m.accuracy - dense.metrics.accuracy) * 100:+.2f}",
            f"{m.macro_f1:.3f}",
            f"{m.loss:.3f}",
            f"{_si(p.params_nonzero)}/{_si(p.params_total)}",
            f"{p.bytes_sparse / 1024:.1f}",
            _si(p.macs_effective),
            f"{p.latency_ms:.3f}",
            _si(p.throughput),
        )
    return table


def write_sweep(out: Path, doc: dict[str, Any], result: SweepResult) -> None:
    """``result.json`` and ``sweep.csv`` in ``out``."""
    write_json(out / "result.json", doc)
    write_csv(out / "sweep.csv", sweep_rows(result))


def listing_table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table
