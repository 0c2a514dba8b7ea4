"""Render results: the JSON document, CSV rows and Rich tables. Computes nothing.

``result.json`` schema (version 2; ``prunescope run``'s sections are in ``docs/result-schema.md``)::

    {"schema": "prunescope.result", "version": 2, "command": "sweep" | "scan" | "pick" | "compare" | "run",
     "created": ISO-8601 UTC time, "prunescope_version": "...",
     "settings": {...options of the command...},
     "model": model spec, "dataset": dataset spec,
     "training": {"history": [epoch records]}                  # when a model was trained
     "sweep": {"criterion", "allocation", "split", "targets": [...],
               "points": [{"sparsity", "achieved_sparsity", "allocation": {target: s},
                           "metrics": {"accuracy", "macro_f1", "loss", "n", "accuracy_ci", "extra"},
                           "measure": {"params_total", "params_nonzero", "bytes_dense", "bytes_sparse",
                                       "macs_dense", "macs_effective", "latency": {"1": …, "256": …}}}]}}

Fractions (sparsity, accuracy, F1) are in [0, 1]; loss in nats; MACs per sample; latency
in milliseconds at batch 1; throughput in samples per second at batch 256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from torch import nn

from prunescope.curves import CurvePoint, Curves
from prunescope.io import write_csv, write_json
from prunescope.masks import removed_count
from prunescope.pick.choose import Choice
from prunescope.pipeline.compare import Comparison
from prunescope.pipeline.sweep import SweepResult
from prunescope.report.plots import allocation_plot, curves_plot, metric_vs_sparsity_plot
from prunescope.report.schema import document
from prunescope.report.verdict import crossval_clause, predicted_drop_text
from prunescope.scan.files import SCAN_FILE
from prunescope.scan.identity import model_fingerprint
from prunescope.scores import Score
from prunescope.structured.find import find_groups
from prunescope.targets import find_targets
from prunescope.train.loop import EpochRecord


def sweep_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One flat CSV row per sparsity level."""
    rows = []
    for p in result.points:
        low, high = p.metrics.accuracy_ci
        rows.append(
            {
                "sparsity": p.sparsity,
                "pattern": p.pattern or "",
                "achieved_sparsity": round(p.achieved_sparsity, 6),
                "accuracy": p.metrics.accuracy,
                "accuracy_ci_low": low,
                "accuracy_ci_high": high,
                "macro_f1": p.metrics.macro_f1,
                "loss": p.metrics.loss,
                **{k: v for k, v in p.measure.items() if k != "latency"},
                "latency_ms": p.measure["latency"]["1"]["median_ms"],
                "throughput": p.measure["latency"]["256"]["throughput"],
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
    """One row per sparsity: metrics on the split (accuracy with its 95% interval, or a language model's perplexity
    and token accuracy), and measurements."""
    dense = result.dense
    score = Score(result.metric)
    split_by = "N:M patterns" if result.patterns else f"{result.allocation} allocation"
    table = Table(title=title or f"{result.split} metrics vs sparsity ({split_by}, {result.criterion} criterion)")
    quality = (("perplexity", score.change_unit, "token accuracy") if score.lower_is_better
               else ("accuracy", "95% CI", "Δ pts", "macro-F1"))
    for column in ("sparsity", *quality, "loss", "non-zero", "KiB", "MACs", "ms b=1", "samples/s"):
        table.add_column(column, justify="right", no_wrap=True)
    for p in result.points:
        m = p.metrics
        cells = ([score.measured_text(m), score.change_text(m, dense.metrics), f"{m.accuracy:.2%}"]
                 if score.lower_is_better else
                 [f"{m.accuracy:.2%}", f"{m.accuracy_ci[0]:.1%}–{m.accuracy_ci[1]:.1%}",
                  score.change_text(m, dense.metrics), f"{m.macro_f1:.3f}"])
        table.add_row(
            f"{p.achieved_sparsity:.1%}" + (f" ({p.pattern})" if p.pattern else ""),
            *cells,
            f"{m.loss:.3f}",
            f"{_si(p.measure['params_nonzero'])}/{_si(p.measure['params_total'])}",
            f"{p.measure['bytes_sparse'] / 1024:.1f}",
            _si(p.measure["macs_effective"]),
            f"{p.measure['latency']['1']['median_ms']:.3f}",
            _si(p.measure["latency"]["256"]["throughput"]),
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


def history_table(title: str, history: Sequence[EpochRecord]) -> Table:
    """One row per epoch: train loss, the val metrics (perplexity and token accuracy for a language model), seconds."""
    language = any(r.val_perplexity is not None for r in history)
    columns = ["epoch", "train loss", *(["val perplexity", "val token accuracy"] if language
                                        else ["val accuracy", "val macro-F1"]), "val loss", "seconds"]
    rows = [[str(r.epoch), f"{r.train_loss:.4f}",
             *([f"{r.val_perplexity:.3f}", f"{r.val_accuracy:.2%}"] if language
               else [f"{r.val_accuracy:.2%}", f"{r.val_macro_f1:.3f}"]),
             f"{r.val_loss:.4f}", f"{r.seconds:.1f}"] for r in history]
    return listing_table(title, columns, rows)


def level_text(sparsity: float, size: int, channels: bool) -> str:
    """A sparsity as the user reads it: ``"13/16 kept"`` for a channel group, ``"90.0%"`` for weights."""
    if channels:
        return f"{size - removed_count(sparsity, size)}/{size} kept"
    return f"{sparsity:.1%}"


def scan_table(curves: Curves, tolerance: float) -> Table:
    """Per target: points measured, and the highest measured sparsity within ``tolerance`` (a score drop) of dense."""
    channels = curves.granularity == "channel"
    unit = "channels" if channels else "weights"
    score = Score(curves.metric)
    shown = "pts" if not score.lower_is_better else "% perplexity"
    table = Table(title=f"sensitivity of each {'channel group' if channels else 'layer'} (val {curves.metric}, "
                  f"dense {score.value_text(curves.dense.value)} on {curves.dense.n} val examples, "
                  f"tolerance {score.drop_text(tolerance, sign=False)}; "
                  f"sparsity = fraction of {unit})")
    for column in ("group" if channels else "layer", unit, "points", "highest sparsity within tolerance",
                   f"drop there ({shown})", f"drop at the highest level ({shown})"):
        table.add_column(column, justify="right" if column not in ("layer", "group") else "left",
                         overflow="fold")

    def drop(point: CurvePoint) -> str:
        return score.drop_text(curves.dense_at(point.n).value - point.value).split()[0]

    for name, curve in curves.curves.items():
        points = curve.sorted_points()
        within = [p for p in points if curves.dense_at(p.n).value - p.value <= tolerance]
        best = within[-1] if within else None
        last = points[-1] if points else None
        table.add_row(
            name,
            _si(curve.numel),
            str(len(points)),
            level_text(best.sparsity, curve.numel, channels) if best else "none",
            drop(best) if best else "-",
            f"{drop(last)} at {level_text(last.sparsity, curve.numel, channels)}" if last else "-",
        )
    for name, reason in curves.skipped.items():
        table.add_row(f"[dim]{name}[/dim]", "-", "-", "left dense", "-", f"[dim]{reason}[/dim]")
    return table


def choice_table(choice: Choice, sizes: dict[str, int] | None = None, metric: str = "accuracy") -> Table:
    """The verified allocation per target, who decided it, and the predicted drop there.

    ``sizes`` (channel picks: each group's width) shows channels kept / total instead of a fraction.
    ``metric``: the scan's, which says how drops read (points of accuracy, percent of perplexity).
    """
    drops = choice.pick.details.get("drops", {})
    channels = choice.footprint is not None
    score = Score(metric)
    removed = "of the parameters removed (whole channels)" if channels else "of the weights removed"
    verified = choice.verified
    predicted = (predicted_drop_text(verified.predicted_drop, verified.reference) + " pts"
                 if not score.lower_is_better else score.drop_text(verified.predicted_drop))
    table = Table(title=f"{choice.picker} pick: {choice.global_sparsity:.1%} {removed}; joint drop "
                  f"predicted {predicted}, measured {score.drop_text(verified.measured_drop)} in-sample"
                  f"{crossval_clause(None if choice.crossval is None else choice.crossval.to_dict())}")
    first = "group" if channels else "layer"
    for column in (first, "picked", "verified", "decided by",
                   f"predicted drop ({'% perplexity' if score.lower_is_better else 'pts'})"):
        table.add_column(column, justify="right" if column != first else "left", overflow="fold")
    for name, sparsity in verified.allocation.items():
        size = (sizes or {}).get(name)

        def shown(value: float, size: int | None = size) -> str:
            return level_text(value, size, True) if channels and size else f"{value:.1%}"

        table.add_row(
            name,
            shown(choice.pick.allocation.get(name, 0.0)),
            shown(sparsity),
            choice.pick.decided_by.get(name, choice.picker),
            score.drop_text(drops[name]).split()[0] if name in drops else "-",
        )
    return table


def comparison_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """One CSV row per method and sparsity of a ``Comparison.to_dict()`` (perplexities too for a language model)."""
    rows = []
    language = Score(comparison.get("metric", "accuracy")).lower_is_better
    for r in comparison["rows"]:
        val, test = r["val"] or {}, r["test"] or {}
        extra = ({"val_perplexity": (val.get("extra") or {}).get("perplexity"),
                  "test_perplexity": (test.get("extra") or {}).get("perplexity")} if language else {})
        rows.append({
            "method": r["method"],
            "sparsity": r["sparsity"],
            "achieved_sparsity": r["achieved"],
            **extra,
            "val_accuracy": val.get("accuracy"),
            "val_macro_f1": val.get("macro_f1"),
            "test_accuracy": test.get("accuracy"),
            "error": r["error"],
            **{f"sparsity[{name}]": s for name, s in r["allocation"].items()},
        })
    return rows


def comparison_table(comparison: Comparison) -> Table:
    """Rows: sparsities; columns: methods; cells: val accuracy (test accuracy), or perplexities for a language model."""
    score = Score(comparison.metric)
    methods = list(dict.fromkeys(r.method for r in comparison.rows))
    test = " (test)" if comparison.dense_test else ""
    dense = f"dense val {score.measured_text(comparison.dense_val)} on {comparison.dense_val.n} examples"
    if comparison.dense_test:
        dense += f", test {score.measured_text(comparison.dense_test)}"
    table = Table(title=f"one-shot {score.label}, val{test}, by allocation ({comparison.criterion} criterion; {dense})")
    table.add_column("sparsity" if comparison.granularity == "weight" else "MACs removed", justify="right")
    for method in methods:
        table.add_column(method, justify="right", no_wrap=True)
    for sparsity in dict.fromkeys(r.sparsity for r in comparison.rows):
        cells = []
        for method in methods:
            row = next(r for r in comparison.rows if r.sparsity == sparsity and r.method == method)
            if row.val is None:
                cells.append("infeasible")
            else:
                cells.append(score.measured_text(row.val) + (f" ({score.measured_text(row.test)})" if row.test else ""))
        table.add_row(f"{sparsity:.0%}", *cells)
    return table


def write_comparison(out: Path, doc: dict[str, Any], comparison: Comparison) -> None:
    """``result.json``, ``compare.csv``, and plots: allocations per sparsity, the metric vs sparsity per method."""
    write_json(out / "result.json", doc)
    write_csv(out / "compare.csv", comparison_rows(comparison.to_dict()))
    feasible = [r for r in comparison.rows if r.val is not None]
    for sparsity in dict.fromkeys(r.sparsity for r in feasible):
        allocations = {r.method: r.allocation for r in feasible if r.sparsity == sparsity}
        allocation_plot(allocations, out / "plots" / f"allocation_{sparsity:g}.png",
                        f"per-layer sparsity at {sparsity:.0%} overall")
    score = Score(comparison.metric)
    for split in ("val", "test"):
        series: dict[str, list[tuple[float, float, float]]] = {}
        for r in feasible:
            metrics = getattr(r, split)
            if metrics is None:
                continue
            if score.lower_is_better:  # no interval on a perplexity
                series.setdefault(r.method, []).append((r.sparsity, score.shown(score.of(metrics)), 0.0))
            else:
                low, high = metrics.accuracy_ci
                series.setdefault(r.method, []).append((r.sparsity, metrics.accuracy, (high - low) / 2))
        if series:
            bars = "" if score.lower_is_better else " (bars: 95% CI half-width)"
            metric_vs_sparsity_plot(series, out / "plots" / f"{split}_{score.label}.png", f"{split} {score.label}",
                                    f"one-shot {split} {score.label}{bars}")


def run_table(doc: dict[str, Any]) -> Table:
    """The final table of ``prunescope run``: dense, every method after fine-tuning, scratch runs (accuracy with its
    95% interval, or a language model's perplexity and its change from dense)."""
    dense, score = doc["dense"], Score(doc.get("metric", "accuracy"))
    table = Table(title=f"{doc['model']['name']} on {doc['dataset']['name']}: every method at "
                  f"{doc['sparsity']:.0%} sparsity, fine-tuned; val on all {dense['val']['n']} val examples, "
                  f"test on all {dense['test']['n']} test examples, read once")
    quality = (("one-shot val ppl", "val ppl", "test ppl", score.change_unit) if score.lower_is_better
               else ("one-shot val", "val", "test (95% CI)", "Δ test pts"))
    for column in ("model", *quality, "non-zero", "KiB", "MACs", "ms b=1"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)

    def add(name: str, entry: dict[str, Any], one_shot: str = "-") -> None:
        test, size = entry["test"], entry["measure"]
        shown = score.measured_text(test)
        if not score.lower_is_better:
            shown += f" ({test['accuracy_ci'][0]:.1%}–{test['accuracy_ci'][1]:.1%})"
        table.add_row(
            name, one_shot, score.measured_text(entry["val"]), shown, score.change_text(test, dense["test"]),
            f"{_si(size['params_nonzero'])}/{_si(size['params_total'])}", f"{size['bytes_sparse'] / 1024:.1f}",
            _si(size["macs_effective"]), f"{size['latency']['1']['median_ms']:.3f}",
        )

    add("dense", dense)
    for m in doc["methods"]:
        if m["error"] is not None:
            table.add_row(m["method"], "infeasible", *["-"] * 7)
        else:
            add(m["method"], m, score.measured_text(m["one_shot"]["val"]))
    for s in doc["scratch"]:
        add(f"scratch-{s['mode']} ({s['epochs']} ep)", s)
    return table


def save_scan(
    out: Path,
    curves: Curves,
    *,
    model: nn.Module,
    checkpoint: str | None,
    model_spec: dict,
    dataset_spec: dict,
    settings: dict[str, Any],
    prunable: dict | None = None,
) -> None:
    """``scan.json`` (the curves, the checkpoint scanned and its fingerprint, the prunable share when given),
    ``scan.csv`` and ``plots/curves.png``."""
    fingerprint = model_fingerprint(model, find_targets(model))
    extra: dict[str, Any] = {} if prunable is None else {"prunable": prunable}
    if curves.granularity == "channel":  # each group's members: the layers whose slices go with its channels
        groups = find_groups(model, model_spec["input_shape"]).groups
        extra["groups"] = {name: groups[name].to_dict() for name in curves.curves if name in groups}
    checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None  # pick works from any directory
    doc = document(
        "scan", settings, model=model_spec, dataset=dataset_spec, checkpoint=checkpoint, fingerprint=fingerprint,
        curves=curves.to_dict(), **extra,
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
