"""The page's sections on what the scan and the pick found: verdict, settings, the dense model, sensitivity,
the allocation, before / after, accuracy vs sparsity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunescope.curves import Curves
from prunescope.report.blocks import Cell, Columns, Error, Items, Section, figure_of, note_of, table_of
from prunescope.report.formats import (
    bytes_text,
    count_text,
    finished,
    fixed,
    latency_at,
    methods_of,
    ms_text,
    num,
    pct,
    setting,
    si,
)
from prunescope.report.plots import (
    allocation_figure,
    curves_figure,
    interval_panels_figure,
    training_figure,
)
from prunescope.report.quality import Quality
from prunescope.report.verdict import crossval_clause, predicted_drop_text


def _verdict(doc: Mapping[str, Any]) -> Section | None:
    verdict = doc.get("verdict")
    if not verdict:
        return None
    items = [verdict] if isinstance(verdict, str) else list(verdict)
    return Section("verdict", "Verdict", [Items([str(item) for item in items], "verdict")])


def _settings(doc: Mapping[str, Any]) -> Section | None:
    parts = []
    for key, title in (("settings", "Options of the run"), ("model", "Model"), ("dataset", "Data set")):
        value = doc.get(key)
        if isinstance(value, Mapping) and value:
            rows = [(name, setting(v)) for name, v in value.items()]
            parts.append(table_of(("option" if key == "settings" else "field", "value"), rows, caption=title, left=2,
                                css="settings"))
    if not parts:
        return None
    return Section("settings", "Run settings", [Columns(parts)])


def _measure_rows(measure: Mapping[str, Any], dense: bool) -> list[tuple[str, str]]:
    rows = [
        ("parameters (non-zero / total)", f"{si(measure.get('params_nonzero'))} / {si(measure.get('params_total'))}"),
        ("size, dense storage", bytes_text(measure.get("bytes_dense"))),
        ("size, sparse storage", bytes_text(measure.get("bytes_sparse"))),
        ("MACs per sample" if dense else "effective MACs per sample",
         si(measure.get("macs_dense" if dense else "macs_effective"))),
    ]
    latency = measure.get("latency")
    if isinstance(latency, Mapping):
        for batch, entry in latency.items():
            if isinstance(entry, Mapping):
                rows.append((f"latency, batch {batch} (median, p10–p90)",
                             f"{ms_text(entry.get('median_ms'))} "
                             f"({ms_text(entry.get('p10_ms'))}–{ms_text(entry.get('p90_ms'))})"))
                rows.append((f"throughput, batch {batch}", f"{si(entry.get('throughput'))} samples/s"))
    return rows


def _dense(doc: Mapping[str, Any]) -> Section | None:
    dense = doc.get("dense")
    if not isinstance(dense, Mapping):
        return None
    parts, quality = [], Quality.of(doc)
    splits = [(split, dense[split]) for split in ("val", "test") if isinstance(dense.get(split), Mapping)]
    if splits:
        parts.append(table_of(
            ("split", quality.name if quality.perplexity else "accuracy (95% CI)", "macro-F1", "loss (nats)",
             "examples"),
            [(split, quality.cell(m), fixed(m.get("macro_f1")), fixed(m.get("loss")), count_text(m.get("n")))
             for split, m in splits],
            caption="metrics of the dense model",
        ))
    measure = dense.get("measure")
    if isinstance(measure, Mapping):
        parts.append(table_of(("measurement", "value"), _measure_rows(measure, dense=True),
                            caption="size and speed of the dense model", left=1, css="settings"))
    parts = [Columns(parts)] if parts else []
    history = dense.get("history")
    if isinstance(history, list) and history:
        seconds = sum(num(r.get("seconds")) or 0.0 for r in history if isinstance(r, Mapping))
        parts.append(figure_of(lambda: training_figure(history, "training the dense model"),
                             "training curve of the dense model",
                             f"{len(history)} epochs, {seconds:.0f} s of training"))
    if not parts:
        return None
    return Section("dense", "Dense baseline", parts)


def _sensitivity(doc: Mapping[str, Any]) -> Section | None:
    scan = doc.get("scan")
    if not isinstance(scan, Mapping) or not isinstance(scan.get("curves"), Mapping):
        return None
    curves = Curves.from_dict(scan["curves"])
    tolerance, quality = num(scan.get("tolerance")), Quality.of(doc)
    parts = [note_of("Each curve is measured once on the validation split; the band is the 95% interval "
                   "of each evaluation.")]
    explanation = "Each line prunes one layer alone, every other layer dense."
    if tolerance is not None:
        explanation += f" The green band is the tolerance: val {quality.drop(tolerance)} worse than the dense model."
    parts.append(note_of(explanation))
    parts.append(figure_of(lambda: curves_figure(curves, tolerance), "sensitivity curves of each layer"))
    rows = []
    for name, curve in curves.curves.items():
        points = curve.sorted_points()
        if not points:
            continue
        within = ([p for p in points if curves.dense_at(p.n).value - p.value <= tolerance]
                  if tolerance is not None else [])
        best = within[-1] if within else None
        last = points[-1]
        rows.append((
            name, si(curve.numel), si(curve.macs), str(len(points)),
            ("none" if best is None else pct(best.sparsity, 1)) if tolerance is not None else "–",
            f"{quality.score.drop_text(curves.dense_at(last.n).value - last.value)} at {pct(last.sparsity, 0)}",
        ))
    if rows:
        parts.append(table_of(("layer", "weights", "MACs", "points", "highest sparsity within tolerance",
                             "drop at the highest level"), rows,
                            caption=f"val {curves.metric} of the dense model: "
                                    f"{quality.text(quality.of_score(curves.dense.value))}; "
                                    f"{curves.evaluations} evaluations ({curves.criterion} criterion)"))
    return Section("sensitivity", "Sensitivity of each layer", parts)


def _allocation(doc: Mapping[str, Any]) -> Section | None:
    methods = [m for m in methods_of(doc)
               if finished(m) and isinstance(m.get("allocation"), Mapping) and m["allocation"]]
    if not methods:
        return None
    names = [str(m.get("method")) for m in methods]
    targets = list(dict.fromkeys(t for m in methods for t in m["allocation"]))
    allocations = {name: {t: float(m["allocation"].get(t, 0.0)) for t in targets}
                   for name, m in zip(names, methods, strict=True)}
    sparsity = num(doc.get("sparsity"))
    title = f"per-layer sparsity at {sparsity:.0%} overall" if sparsity is not None else "per-layer sparsity"
    parts, quality = [], Quality.of(doc)
    pick = doc.get("pick")
    if isinstance(pick, Mapping):
        verified = pick.get("verified") if isinstance(pick.get("verified"), Mapping) else {}
        text = f"ours: picked by the {pick.get('picker', '?')} picker"
        predicted, measured = num(verified.get("predicted_drop")), num(verified.get("measured_drop"))
        reference = num(verified.get("reference"))
        if predicted is not None and measured is not None:
            shown = (f"{predicted_drop_text(predicted, reference)} pts"
                     if reference is not None and not quality.perplexity else quality.score.drop_text(predicted))
            text += (f"; joint drop on val predicted {shown}, measured {quality.score.drop_text(measured)} before "
                     "fine-tuning")
        if num(pick.get("bound")) is not None:
            text += f" (bound {quality.drop(pick['bound'])})"
        crossval = pick.get("crossval")
        parts.append(note_of(text + crossval_clause(crossval if isinstance(crossval, Mapping) else None,
                                                    quality.score) + "."))
    parts.append(figure_of(lambda: allocation_figure(allocations, title), "per-layer sparsity of each method"))
    rows = [(t, *(pct(allocations[n][t], 1) for n in names)) for t in targets]
    rows.append((Cell("overall", em=True), *(pct(m.get("sparsity"), 1) for m in methods)))
    parts.append(table_of(("layer", *names), rows, caption="sparsity of each layer (share of its weights set to zero)"))
    return Section("allocation", "Chosen allocation per method", parts)


def _before_after(doc: Mapping[str, Any]) -> Section | None:
    methods = methods_of(doc)
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    if not methods:
        return None
    quality = Quality.of(doc)
    dense_test, dense_val, short = quality.value(dense.get("test")), quality.value(dense.get("val")), quality.short
    headers = ("model", "sparsity", f"one-shot val {short}", f"val {short}",
               f"test {short}" + ("" if quality.perplexity else " (95% CI)"),
               f"Δ test vs dense ({quality.change_unit})", "test macro-F1", "non-zero params", "size",
               "MACs (effective)", "latency b=1", "throughput b=256")

    def row(name: Any, sparsity: Any, one_shot: Any, entry: Mapping[str, Any], dense_row: bool) -> tuple:
        test = entry.get("test") if isinstance(entry.get("test"), Mapping) else {}
        measure = entry.get("measure") if isinstance(entry.get("measure"), Mapping) else {}
        return (
            name, pct(sparsity, 1), one_shot, quality.cell(entry.get("val")), quality.cell(test),
            "–" if dense_row else quality.change(quality.value(test), dense_test),
            fixed(test.get("macro_f1")),
            si(measure.get("params_nonzero")),
            bytes_text(measure.get("bytes_dense" if dense_row else "bytes_sparse")),
            si(measure.get("macs_dense" if dense_row else "macs_effective")),
            ms_text(latency_at(measure, "1").get("median_ms")),
            f"{si(latency_at(measure, '256').get('throughput'))}/s" if latency_at(measure, "256") else "–",
        )

    rows = []
    if dense:
        rows.append(row(Cell("dense", em=True), 0.0, "–", dense, True))
    failed = []
    for m in methods:
        if not finished(m):
            failed.append(m)
            continue
        one_shot = m.get("one_shot") if isinstance(m.get("one_shot"), Mapping) else {}
        rows.append(row(m.get("method", "?"), m.get("sparsity"), quality.cell(one_shot.get("val")), m, False))
    parts = [note_of("Every method is pruned to the same overall sparsity, then fine-tuned. One-shot: val "
                     f"{quality.name} right after pruning, before fine-tuning. The other metrics are after "
                     "fine-tuning; test is read once, at the end. Size: dense storage for the dense model, sparse "
                     "storage (non-zero values and their indices) for the pruned ones; MACs counted only for "
                     "non-zero weights.")]
    if dense_val is not None:
        parts.append(note_of(f"Dense val {quality.name} {quality.text(dense_val)}"
                           + (f", test {quality.text(dense_test)}." if dense_test is not None else ".")))
    parts.append(table_of(headers, rows, caption="before (dense) and after pruning and fine-tuning", css="wide"))
    for m in failed:
        parts.append(Error(f'{m.get("method", "?")} did not reach {pct(m.get("sparsity"), 1)}: {m.get("error")}'))
    return Section("before-after", "Before and after, per method", parts)


def _accuracy_vs_sparsity(doc: Mapping[str, Any]) -> Section | None:
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    quality = Quality.of(doc)
    panels: list[tuple[str, dict[str, list], tuple[float, float, float] | None]] = []
    for title, split, stage in (("one-shot, val", "val", "one_shot"), ("fine-tuned, val", "val", None),
                                ("fine-tuned, test", "test", None)):
        series: dict[str, list] = {}
        for m in methods_of(doc):
            sparsity = num(m.get("sparsity"))
            if not finished(m) or sparsity is None:
                continue
            source = m.get(stage) if stage else m
            point = quality.interval(source.get(split)) if isinstance(source, Mapping) else None
            if point is not None:
                series.setdefault(str(m.get("method", "?")), []).append((sparsity, *point))
        if series:
            panels.append((title, series, quality.interval(dense.get(split))))
    if not panels:
        return None
    bars = ("Error bars: the 95% interval of each accuracy. Black line and grey band: the dense model and its "
            "interval." if not quality.perplexity else "Black line: the dense model.")
    body = [note_of(f"{bars} Methods at the same sparsity are drawn slightly apart."),
            figure_of(lambda: interval_panels_figure(panels, quality.name),
                      f"{quality.name} versus sparsity per method")]
    return Section("accuracy", f"{quality.name.capitalize()} vs sparsity", body)


SECTIONS = (_verdict, _settings, _dense, _sensitivity, _allocation, _before_after, _accuracy_vs_sparsity)
