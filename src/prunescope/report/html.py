"""One self-contained HTML page of a ``prunescope run`` result (``result.json``, schema v2).

The page embeds its plots as base64 PNG ``data:`` URIs and its CSS inline; it has no
JavaScript and references nothing outside itself (a Content-Security-Policy forbids it
too), so it can be mailed, archived or printed as one file. The page is a Jinja2 template
(``templates/report.html.j2``, its CSS ``templates/report.css``) with autoescaping: every
string that comes from the document (layer names, settings, model names, verdict text) is
HTML-escaped. The sections below prepare plain data (:class:`Table`, :class:`Note`…) for it.

Like :mod:`prunescope.report.tables` this renders; it computes nothing beyond differences of the
numbers it shows. Each section appears only when its data is in the document.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import matplotlib
from matplotlib.figure import Figure

from prunescope.curves import Curves
from prunescope.io import write_text
from prunescope.report.plots import (
    allocation_figure,
    curves_figure,
    epoch_curves_figure,
    heatmaps_figure,
    interval_panels_figure,
    phase_figure,
    png_bytes,
    recovered_figure,
    search_history_figure,
    shift_figure,
    training_figure,
)
from prunescope.report.schema import RESULT_FILE, SCHEMA, SCHEMA_VERSION, check_result
from prunescope.report.verdict import crossval_clause, predicted_drop_text

REPORT_FILE = "report.html"


def write_html(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write :func:`render_html` of ``doc`` to ``out_dir/report.html`` atomically; return its path."""
    return write_text(Path(out_dir) / REPORT_FILE, render_html(doc))


# ---------------------------------------------------------------------------------------------
# Formatting


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _pct(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return "–" if number is None else f"{number * 100:.{digits}f}%"


def _pts(delta: float | None) -> str:
    return "–" if delta is None else f"{delta * 100:+.2f}"


def _si(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {unit}"
    return f"{number:.0f}"


def _bytes(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {unit}"
    return f"{number:.0f} B"


def _count(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:,.0f}"


def _fixed(value: Any, digits: int = 4) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _ms(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.3f} ms"


def _setting(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "–"
    return json.dumps(value, ensure_ascii=False)


def _accuracy(metrics: Any) -> float | None:
    return _number(metrics.get("accuracy")) if isinstance(metrics, Mapping) else None


def _ci(metrics: Any) -> tuple[float, float] | None:
    if not isinstance(metrics, Mapping):
        return None
    ci = metrics.get("accuracy_ci")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_number(v) is not None for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def _acc_ci(metrics: Any) -> Cell:
    """Accuracy with its 95% interval underneath, small."""
    accuracy, ci = _accuracy(metrics), _ci(metrics)
    if accuracy is None:
        return Cell("–")
    return Cell(_pct(accuracy), None if ci is None else f"{_pct(ci[0], 1)}–{_pct(ci[1], 1)}")


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _latency(measure: Mapping[str, Any], batch: str = "1") -> Mapping[str, Any]:
    latency = measure.get("latency")
    entry = latency.get(batch) if isinstance(latency, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


# ---------------------------------------------------------------------------------------------
# HTML pieces


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, optionally a 95% interval shown small beneath it, or emphasised."""

    text: str
    ci: str | None = None
    em: bool = False


def _cell(value: Any) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


@dataclass(frozen=True)
class Table:
    """Rows of cells under headers; the first ``left`` columns are text (left-aligned), the others numbers, and
    the first cell of a row is its header."""

    headers: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    left: int = 1
    css: str = ""
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Note:
    text: str
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class Error:
    """What could not be shown, and why, in red."""

    text: str
    kind: ClassVar[str] = "error"


@dataclass(frozen=True)
class Items:
    """A list of sentences (``css``: ``plain``, or ``verdict`` for the highlighted box)."""

    items: list[str]
    css: str = "plain"
    kind: ClassVar[str] = "items"


@dataclass(frozen=True)
class Picture:
    """A plot as base64 PNG data, with its alt text and an optional caption."""

    png: str
    alt: str
    caption: str | None = None
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class Columns:
    """Parts side by side."""

    parts: list[Any]
    kind: ClassVar[str] = "columns"


def _table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: Any = None,
           left: int = 1, css: str = "") -> Table:
    return Table([str(h) for h in headers], [[_cell(c) for c in row] for row in rows],
                 None if caption is None else str(caption), left, css)


def _note(text: Any) -> Note:
    return Note(str(text))


def _figure(build: Callable[[], Figure], alt: str, caption: Any = None) -> Picture | Error:
    """A plot embedded as a base64 PNG; a plot that fails becomes a visible note, not a failed page."""
    try:
        # Document strings (layer names) are drawn as they are: a "$" starts no mathtext.
        with matplotlib.rc_context({"text.parse_math": False}):
            png = png_bytes(build())
    except Exception as error:  # one plot must not take the whole report down
        return Error(f"plot not drawn: {type(error).__name__}: {error}")
    return Picture(base64.b64encode(png).decode("ascii"), alt, None if caption is None else str(caption))


@dataclass
class _Section:
    """A section: the template draws ``lead`` (the notes and the first table or plot, kept on one printed page
    with the heading), then ``rest``."""

    anchor: str
    title: str
    parts: list[Any] = field(default_factory=list)

    @property
    def _leading(self) -> int:
        count = 0
        while count < len(self.parts) and isinstance(self.parts[count], Note):
            count += 1
        return count + 1

    @property
    def lead(self) -> list[Any]:
        return self.parts[: self._leading]

    @property
    def rest(self) -> list[Any]:
        return self.parts[self._leading :]


# ---------------------------------------------------------------------------------------------
# Sections


def _methods(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    methods = doc.get("methods")
    return [m for m in methods if isinstance(m, Mapping)] if isinstance(methods, list) else []


def _ok(method: Mapping[str, Any]) -> bool:
    return not method.get("error")


def _verdict(doc: Mapping[str, Any]) -> _Section | None:
    verdict = doc.get("verdict")
    if not verdict:
        return None
    items = [verdict] if isinstance(verdict, str) else list(verdict)
    return _Section("verdict", "Verdict", [Items([str(item) for item in items], "verdict")])


def _settings(doc: Mapping[str, Any]) -> _Section | None:
    parts = []
    for key, title in (("settings", "Options of the run"), ("model", "Model"), ("dataset", "Data set")):
        value = doc.get(key)
        if isinstance(value, Mapping) and value:
            rows = [(name, _setting(v)) for name, v in value.items()]
            parts.append(_table(("option" if key == "settings" else "field", "value"), rows, caption=title, left=2,
                                css="settings"))
    if not parts:
        return None
    return _Section("settings", "Run settings", [Columns(parts)])


def _measure_rows(measure: Mapping[str, Any], dense: bool) -> list[tuple[str, str]]:
    rows = [
        ("parameters (non-zero / total)", f"{_si(measure.get('params_nonzero'))} / {_si(measure.get('params_total'))}"),
        ("size, dense storage", _bytes(measure.get("bytes_dense"))),
        ("size, sparse storage", _bytes(measure.get("bytes_sparse"))),
        ("MACs per sample" if dense else "effective MACs per sample",
         _si(measure.get("macs_dense" if dense else "macs_effective"))),
    ]
    latency = measure.get("latency")
    if isinstance(latency, Mapping):
        for batch, entry in latency.items():
            if isinstance(entry, Mapping):
                rows.append((f"latency, batch {batch} (median, p10–p90)",
                             f"{_ms(entry.get('median_ms'))} ({_ms(entry.get('p10_ms'))}–{_ms(entry.get('p90_ms'))})"))
                rows.append((f"throughput, batch {batch}", f"{_si(entry.get('throughput'))} samples/s"))
    return rows


def _dense(doc: Mapping[str, Any]) -> _Section | None:
    dense = doc.get("dense")
    if not isinstance(dense, Mapping):
        return None
    parts = []
    splits = [(split, dense[split]) for split in ("val", "test") if isinstance(dense.get(split), Mapping)]
    if splits:
        parts.append(_table(
            ("split", "accuracy (95% CI)", "macro-F1", "loss (nats)", "examples"),
            [(split, _acc_ci(m), _fixed(m.get("macro_f1")), _fixed(m.get("loss")), _count(m.get("n")))
             for split, m in splits],
            caption="metrics of the dense model",
        ))
    measure = dense.get("measure")
    if isinstance(measure, Mapping):
        parts.append(_table(("measurement", "value"), _measure_rows(measure, dense=True),
                            caption="size and speed of the dense model", left=1, css="settings"))
    parts = [Columns(parts)] if parts else []
    history = dense.get("history")
    if isinstance(history, list) and history:
        seconds = sum(_number(r.get("seconds")) or 0.0 for r in history if isinstance(r, Mapping))
        parts.append(_figure(lambda: training_figure(history, "training the dense model"),
                             "training curve of the dense model",
                             f"{len(history)} epochs, {seconds:.0f} s of training"))
    if not parts:
        return None
    return _Section("dense", "Dense baseline", parts)


def _sensitivity(doc: Mapping[str, Any]) -> _Section | None:
    scan = doc.get("scan")
    if not isinstance(scan, Mapping) or not isinstance(scan.get("curves"), Mapping):
        return None
    curves = Curves.from_dict(scan["curves"])
    tolerance = _number(scan.get("tolerance"))
    parts = [_note("Each curve is measured once on the validation split; the band is the 95% interval "
                   "of each evaluation.")]
    explanation = "Each line prunes one layer alone, every other layer dense."
    if tolerance is not None:
        explanation += (f" The green band is the tolerance: {tolerance * 100:g} accuracy points below the dense "
                        "model.")
    parts.append(_note(explanation))
    parts.append(_figure(lambda: curves_figure(curves, tolerance), "sensitivity curves of each layer"))
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
            name, _si(curve.numel), _si(curve.macs), str(len(points)),
            ("none" if best is None else _pct(best.sparsity, 1)) if tolerance is not None else "–",
            f"{_pts(curves.dense_at(last.n).value - last.value)} at {_pct(last.sparsity, 0)}",
        ))
    if rows:
        parts.append(_table(("layer", "weights", "MACs", "points", "highest sparsity within tolerance",
                             "drop at the highest level (pts)"), rows,
                            caption=f"val {curves.metric} of the dense model: {_pct(curves.dense.value)}; "
                                    f"{curves.evaluations} evaluations ({curves.criterion} criterion)"))
    return _Section("sensitivity", "Sensitivity of each layer", parts)


def _allocation(doc: Mapping[str, Any]) -> _Section | None:
    methods = [m for m in _methods(doc) if _ok(m) and isinstance(m.get("allocation"), Mapping) and m["allocation"]]
    if not methods:
        return None
    names = [str(m.get("method")) for m in methods]
    targets = list(dict.fromkeys(t for m in methods for t in m["allocation"]))
    allocations = {name: {t: float(m["allocation"].get(t, 0.0)) for t in targets}
                   for name, m in zip(names, methods, strict=True)}
    sparsity = _number(doc.get("sparsity"))
    title = f"per-layer sparsity at {sparsity:.0%} overall" if sparsity is not None else "per-layer sparsity"
    parts = []
    pick = doc.get("pick")
    if isinstance(pick, Mapping):
        verified = pick.get("verified") if isinstance(pick.get("verified"), Mapping) else {}
        text = f"ours: picked by the {pick.get('picker', '?')} picker"
        predicted, measured = _number(verified.get("predicted_drop")), _number(verified.get("measured_drop"))
        reference = _number(verified.get("reference"))
        if predicted is not None and measured is not None:
            shown = predicted_drop_text(predicted, reference) if reference is not None else _pts(predicted)
            text += f"; joint drop on val predicted {shown} pts, measured {_pts(measured)} pts before fine-tuning"
        if _number(pick.get("bound")) is not None:
            text += f" (bound {pick['bound'] * 100:g} pts)"
        crossval = pick.get("crossval")
        parts.append(_note(text + crossval_clause(crossval if isinstance(crossval, Mapping) else None) + "."))
    parts.append(_figure(lambda: allocation_figure(allocations, title), "per-layer sparsity of each method"))
    rows = [(t, *(_pct(allocations[n][t], 1) for n in names)) for t in targets]
    rows.append((Cell("overall", em=True), *(_pct(m.get("sparsity"), 1) for m in methods)))
    parts.append(_table(("layer", *names), rows, caption="sparsity of each layer (share of its weights set to zero)"))
    return _Section("allocation", "Chosen allocation per method", parts)


def _before_after(doc: Mapping[str, Any]) -> _Section | None:
    methods = _methods(doc)
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    if not methods:
        return None
    dense_test = _accuracy(dense.get("test"))
    dense_val = _accuracy(dense.get("val"))
    headers = ("model", "sparsity", "one-shot val acc.", "val acc.", "test acc. (95% CI)", "Δ test vs dense (pts)",
               "test macro-F1", "non-zero params", "size", "MACs (effective)", "latency b=1", "throughput b=256")

    def row(name: Any, sparsity: Any, one_shot: Any, entry: Mapping[str, Any], dense_row: bool) -> tuple:
        test = entry.get("test") if isinstance(entry.get("test"), Mapping) else {}
        measure = entry.get("measure") if isinstance(entry.get("measure"), Mapping) else {}
        return (
            name, _pct(sparsity, 1), one_shot, _acc_ci(entry.get("val")), _acc_ci(test),
            "–" if dense_row else _pts(_diff(_accuracy(test), dense_test)),
            _fixed(test.get("macro_f1")),
            _si(measure.get("params_nonzero")),
            _bytes(measure.get("bytes_dense" if dense_row else "bytes_sparse")),
            _si(measure.get("macs_dense" if dense_row else "macs_effective")),
            _ms(_latency(measure, "1").get("median_ms")),
            f"{_si(_latency(measure, '256').get('throughput'))}/s" if _latency(measure, "256") else "–",
        )

    rows = []
    if dense:
        rows.append(row(Cell("dense", em=True), 0.0, "–", dense, True))
    failed = []
    for m in methods:
        if not _ok(m):
            failed.append(m)
            continue
        one_shot = m.get("one_shot") if isinstance(m.get("one_shot"), Mapping) else {}
        rows.append(row(m.get("method", "?"), m.get("sparsity"), _acc_ci(one_shot.get("val")), m, False))
    parts = [_note("Every method is pruned to the same overall sparsity, then fine-tuned. One-shot: val accuracy "
                   "right after pruning, before fine-tuning. The other metrics are after fine-tuning; test is read "
                   "once, at the end. Size: dense storage for the dense model, sparse storage (non-zero values and "
                   "their indices) for the pruned ones; MACs counted only for non-zero weights.")]
    if dense_val is not None:
        parts.append(_note(f"Dense val accuracy {_pct(dense_val)}"
                           + (f", test {_pct(dense_test)}." if dense_test is not None else ".")))
    parts.append(_table(headers, rows, caption="before (dense) and after pruning and fine-tuning", css="wide"))
    for m in failed:
        parts.append(Error(f'{m.get("method", "?")} did not reach {_pct(m.get("sparsity"), 1)}: {m.get("error")}'))
    return _Section("before-after", "Before and after, per method", parts)


def _points(metrics: Any, sparsity: float) -> tuple[float, float, float, float] | None:
    accuracy, ci = _accuracy(metrics), _ci(metrics)
    if accuracy is None:
        return None
    low, high = ci if ci is not None else (accuracy, accuracy)
    return (sparsity, accuracy, low, high)


def _reference(metrics: Any) -> tuple[float, float, float] | None:
    point = _points(metrics, 0.0)
    return None if point is None else point[1:]


def _accuracy_vs_sparsity(doc: Mapping[str, Any]) -> _Section | None:
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    panels: list[tuple[str, dict[str, list], tuple[float, float, float] | None]] = []
    for title, split, stage in (("one-shot, val", "val", "one_shot"), ("fine-tuned, val", "val", None),
                                ("fine-tuned, test", "test", None)):
        series: dict[str, list] = {}
        for m in _methods(doc):
            sparsity = _number(m.get("sparsity"))
            if not _ok(m) or sparsity is None:
                continue
            source = m.get(stage) if stage else m
            point = _points(source.get(split), sparsity) if isinstance(source, Mapping) else None
            if point is not None:
                series.setdefault(str(m.get("method", "?")), []).append(point)
        if series:
            panels.append((title, series, _reference(dense.get(split))))
    if not panels:
        return None
    body = [_note("Error bars: the 95% interval of each accuracy. Black line and grey band: the dense model and "
                  "its interval. Methods at the same sparsity are drawn slightly apart."),
            _figure(lambda: interval_panels_figure(panels, "accuracy"), "accuracy versus sparsity per method")]
    return _Section("accuracy", "Accuracy vs sparsity", body)


def _one_shot_reconstructed(doc: Mapping[str, Any]) -> _Section | None:
    """The one-shot comparison pruned by layer-wise reconstruction, row by row beside masks alone."""
    rebuilt = doc.get("one_shot_reconstructed")
    if not isinstance(rebuilt, Mapping) or not isinstance(rebuilt.get("rows"), list):
        return None
    one_shot = doc.get("one_shot") if isinstance(doc.get("one_shot"), Mapping) else {}
    plain = {(r.get("method"), _number(r.get("sparsity"))): r for r in one_shot.get("rows") or []
             if isinstance(r, Mapping)}
    rows, refused = [], []
    for r in (r for r in rebuilt["rows"] if isinstance(r, Mapping)):
        sparsity, method = _number(r.get("sparsity")), str(r.get("method", "?"))
        before = _accuracy(plain.get((r.get("method"), sparsity), {}).get("val"))
        rows.append((_pct(sparsity, 1), method, _pct(before), _acc_ci(r.get("val")),
                     _pts(_diff(_accuracy(r.get("val")), before)), _acc_ci(r.get("test")), "0"))
        if r.get("error"):
            refused.append(Error(f"{method} at {_pct(sparsity, 1)}: {r['error']}"))
    if not rows:
        return None
    settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
    mode = rebuilt.get("reconstruct")
    how = ("its mask chosen by OBS saliency and its kept weights re-fitted" if mode == "obs"
           else "the criterion's mask kept and its kept weights re-fitted")
    parts = [_note(f"Every method's allocation pruned again, one-shot (0 fine-tuning epochs), each layer with {how} by "
                   f"layer-wise reconstruction ({_setting(mode)}) on {_setting(settings.get('calibration'))} train "
                   "examples (no labels), so that its outputs change the least. Same removed counts as with masks "
                   "alone; val only unless a test column is filled."),
             _table(("sparsity", "method", "val acc., masks alone", "val acc., reconstructed (95% CI)",
                     "Δ val (pts)", "test acc., reconstructed (95% CI)", "epochs"), rows,
                    caption="one-shot accuracy with masks alone and with layer-wise reconstruction", left=2)]
    fallback = rebuilt.get("fallback")
    if isinstance(fallback, Mapping) and fallback:
        parts.append(_note("Pruned with masks alone, not reconstructed: "
                           + "; ".join(f"{name} ({why})" for name, why in fallback.items()) + "."))
    return _Section("reconstructed", "One-shot with layer-wise reconstruction", parts + refused)


def _recovered(doc: Mapping[str, Any]) -> _Section | None:
    """How far after fine-tuning: the recovered sweep of ours and a baseline, the bound and the answer."""
    recovered = doc.get("recovered")
    if not isinstance(recovered, Mapping) or not isinstance(recovered.get("curves"), Mapping):
        return None
    reach = recovered.get("reach") if isinstance(recovered.get("reach"), Mapping) else {}
    dense, max_drop = _number(recovered.get("dense_val")), _number(reach.get("max_drop"))
    answer, epochs = _number(recovered.get("answer")), recovered.get("epochs")
    methods = list(recovered["curves"])
    points = sorted(((float(p["sparsity"]), methods.index(m), m, _number(p.get("val")))
                     for m, listed in recovered["curves"].items() for p in listed if isinstance(p, Mapping)),
                    key=lambda entry: entry[:2])
    test = recovered.get("test")
    rows = [(Cell(_pct(s, 1), em=bool(answer) and s == answer), m, "not reached" if val is None else _pct(val),
             _acc_ci(test) if m == "ours" and answer and s == answer else "–", _setting(epochs))
            for s, _, m, val in points]
    gradual = recovered.get("gradual")
    marks = {}
    if answer and _accuracy(test) is not None:
        marks["ours at the answer, test"] = (answer, _accuracy(test))
    if isinstance(gradual, Mapping):
        val = Cell(f"not run: {gradual['error']}") if gradual.get("error") else _acc_ci(gradual.get("val"))
        rows.append((_pct(gradual.get("sparsity"), 1), "gradual (AGP)", val, _acc_ci(gradual.get("test")),
                     _setting(gradual.get("epochs"))))
        if _accuracy(gradual.get("val")) is not None:
            marks["gradual (AGP), val"] = (float(gradual["sparsity"]), _accuracy(gradual.get("val")))
    if not rows:
        return None
    bound = None if dense is None or max_drop is None else dense - max_drop
    allowed = "the allowed drop" if max_drop is None else f"{max_drop * 100:g} pts"
    parts = [_note(f"{' and '.join(methods)}, each fine-tuned {_setting(epochs)} epochs from the dense weights at "
                   "every sparsity of the sweep, judged on val; ours' sweep is widened and bisected to the highest "
                   f"sparsity within {allowed} of the dense val accuracy, below every failure (the answer, "
                   "emphasised). Test is read once: for ours at the answer and for gradual (AGP) pruning to it with "
                   "the same epochs.")]
    series = {m: [(s, val) for s, _, name, val in points if name == m and val is not None] for m in methods}
    if bound is not None and dense is not None and any(series.values()):
        parts.append(_figure(lambda: recovered_figure(series, dense, bound, answer, marks),
                             "val accuracy after fine-tuning versus sparsity, with the bound and the answer"))
    parts.append(_table(("sparsity", "method", "val acc.", "test acc. (95% CI)", "epochs"), rows,
                        caption=f"accuracy after fine-tuning; answer {_pct(answer, 1) if answer else 'none'}"
                                + (f", bound: val ≥ {_pct(bound)}" if bound is not None else ""), left=2))
    return _Section("recovered", "How far after fine-tuning", parts)


def _recovered_channels(doc: Mapping[str, Any]) -> _Section | None:
    """How many times fewer MACs removing channels reaches after fine-tuning, and the speed-up measured there."""
    found = doc.get("recovered_channels")
    if not isinstance(found, Mapping) or not isinstance(found.get("points"), list):
        return None
    reach = found.get("reach") if isinstance(found.get("reach"), Mapping) else {}
    answer, epochs, max_drop = _number(found.get("answer")), found.get("epochs"), _number(reach.get("max_drop"))
    dense_macs = _number(found.get("dense_macs"))
    rows = []
    for point in found["points"]:
        if not isinstance(point, Mapping):
            continue
        removed = _number(point.get("removed_macs"))
        at_answer = bool(answer) and removed == answer
        rows.append((Cell(_pct(removed, 0), em=at_answer), _setting(point.get("params")), _setting(point.get("macs")),
                     "not reached" if point.get("val") is None else _pct(point.get("val")),
                     _acc_ci(found.get("test")) if at_answer else "–", _setting(epochs)))
    if not rows:
        return None
    allowed = "the allowed drop" if max_drop is None else f"{max_drop * 100:g} pts"
    parts = [_note(f"For each fraction of the dense MACs to remove, the budget pick on a channel scan chooses how "
                   f"many channels each group keeps; that smaller model is fine-tuned {_setting(epochs)} epochs and "
                   f"judged on val, widened and bisected to the largest cut within {allowed} (the answer, "
                   "emphasised). Test is read once, at the answer.")]
    parts.append(_table(("MACs removed", "params", "MACs / sample", "val acc.", "test acc. (95% CI)", "epochs"), rows,
                        caption="whole channels removed, then fine-tuned" + (
                            f"; dense {dense_macs:,.0f} MACs / sample" if dense_macs else "")))
    measured = found.get("measure")
    if isinstance(measured, Mapping) and isinstance(measured.get("speedup"), Mapping):
        ranges = measured.get("speedup_range") or {}
        timing = [(batch, f"{_number(value):.2f}×", "–" if batch not in ranges else
                   f"{ranges[batch][0]:.2f}–{ranges[batch][1]:.2f}×") for batch, value in measured["speedup"].items()]
        parts.append(_table(("batch", "speed-up (median)", "range over rounds"), timing,
                            caption=f"the answer ({_number(found.get('mac_reduction')):.2f}× fewer MACs) timed "
                                    "against the dense model, side by side"))
    return _Section("recovered-channels", "How far in whole channels, after fine-tuning", parts)


def _epoch_series(history: Any, key: str = "val_accuracy") -> list[tuple[float, float]]:
    if not isinstance(history, list):
        return []
    points = []
    for i, record in enumerate(history):
        if isinstance(record, Mapping) and _number(record.get(key)) is not None:
            points.append((_number(record.get("epoch")) or i + 1, float(record[key])))
    return points


def _finetune(doc: Mapping[str, Any]) -> _Section | None:
    series, early = {}, []
    for m in _methods(doc):
        finetune = m.get("finetune")
        if not _ok(m) or not isinstance(finetune, Mapping):
            continue
        points = _epoch_series(finetune.get("history"))
        if points:
            series[str(m.get("method", "?"))] = points
            if finetune.get("stopped_early"):
                early.append(f"{m.get('method', '?')} after epoch {points[-1][0]:g}")
    if not series:
        return None
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    reference = _accuracy(dense.get("val"))
    parts = [_figure(lambda: epoch_curves_figure(series, "val accuracy", "fine-tuning after pruning", reference,
                                                 "dense val accuracy"), "val accuracy per fine-tuning epoch")]
    parts.append(_note("Stopped early (no further improvement on val): " + "; ".join(early) + "." if early
                       else "Every method fine-tuned for all its epochs."))
    return _Section("finetune", "Fine-tuning curves", parts)


def _compare_sentence(mode: str, epochs: Any, of: str, tuned: Mapping[str, Any], scratch: Mapping[str, Any],
                      sparsity: float | None) -> str:
    """Plain words: did fine-tuning ``of`` beat training the same sparse network from scratch?"""
    at = f" at {sparsity:.0%} sparsity" if sparsity is not None else ""
    name = f"training from scratch ({mode}{f', {epochs} epochs' if epochs is not None else ''})"
    deltas = {split: _diff(_accuracy(tuned.get(split)), _accuracy(scratch.get(split))) for split in ("val", "test")}
    known = {split: d for split, d in deltas.items() if d is not None}
    if not known:
        return f"{name[0].upper() + name[1:]}: no accuracy to compare with {of} fine-tuned."
    detail = ", ".join(f"{split} {_pct(_accuracy(tuned.get(split)))} vs {_pct(_accuracy(scratch.get(split)))} "
                       f"({_pts(d)} pts)" for split, d in known.items())
    if all(d > 0 for d in known.values()):
        sentence = f"Fine-tuning {of} beat {name}{at}: {detail}."
    elif all(d < 0 for d in known.values()):
        sentence = f"{name[0].upper() + name[1:]} beat fine-tuning {of}{at}: {detail}."
    else:
        sentence = f"No clear winner between fine-tuning {of} and {name}{at}: {detail}."
    split = "test" if "test" in known else "val"
    a, b = _ci(tuned.get(split)), _ci(scratch.get(split))
    if a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]:
        sentence += f" The {split} 95% intervals overlap, so the difference may be noise."
    return sentence


def _scratch(doc: Mapping[str, Any]) -> _Section | None:
    scratch = [s for s in doc.get("scratch") or [] if isinstance(s, Mapping)] \
        if isinstance(doc.get("scratch"), list) else []
    if not scratch:
        return None
    by_method = {str(m.get("method")): m for m in _methods(doc) if _ok(m)}
    sparsity = _number(doc.get("sparsity"))
    rows, sentences, series = [], [], {}
    dashed = []
    for of in dict.fromkeys(str(s.get("allocation_of", "ours")) for s in scratch):
        tuned = by_method.get(of)
        if tuned is not None:
            history = tuned.get("finetune", {}).get("history") if isinstance(tuned.get("finetune"), Mapping) else None
            rows.append((f"{of}, pruned and fine-tuned",
                         str(len(history)) if isinstance(history, list) else "–",
                         _acc_ci(tuned.get("val")), _acc_ci(tuned.get("test")), "–", "–"))
            if _epoch_series(history):
                series[f"{of} fine-tuned"] = _epoch_series(history)
    for s in scratch:
        of = str(s.get("allocation_of", "ours"))
        mode = str(s.get("mode", "?"))
        tuned = by_method.get(of, {})
        rows.append((
            f"scratch-{mode}, allocation of {of}", _setting(s.get("epochs")), _acc_ci(s.get("val")),
            _acc_ci(s.get("test")), _pts(_diff(_accuracy(tuned.get("val")), _accuracy(s.get("val")))),
            _pts(_diff(_accuracy(tuned.get("test")), _accuracy(s.get("test")))),
        ))
        if tuned:
            sentences.append(_compare_sentence(mode, s.get("epochs"), of, tuned, s, sparsity))
        else:
            sentences.append(f"Scratch-{mode}: {of} has no fine-tuned result to compare with.")
        if _epoch_series(s.get("history")):
            label = f"scratch-{mode}"
            series[label] = _epoch_series(s.get("history"))
            dashed.append(label)
    parts = [Items(sentences),
             _table(("model", "epochs", "val acc. (95% CI)", "test acc. (95% CI)",
                     "fine-tuned minus scratch, val (pts)", "fine-tuned minus scratch, test (pts)"), rows,
                    caption="fine-tuning the pruned network vs training the same sparse network from scratch"),
             _note("Scratch-E trains the sparse network (same mask, fresh weights) for as many epochs as the "
                   "dense model; Scratch-B for the same compute budget, so more epochs.")]
    if series:
        parts.append(_figure(lambda: epoch_curves_figure(series, "val accuracy", "fine-tuned vs from scratch",
                                                         dashed=dashed),
                             "val accuracy per epoch, fine-tuned and from scratch"))
    return _Section("scratch", "Fine-tuning vs training from scratch", parts)


def _regimes(doc: Mapping[str, Any]) -> _Section | None:
    """The three-regime study (``prunescope regimes``): phase diagrams, cells, advice per density."""
    study = doc.get("regimes")
    if not isinstance(study, Mapping):
        return None
    temps, densities = study["temperatures"], study["densities"]
    cells = {(c["temperature"], c["density"]): c for c in study["cells"]}
    regimes = [[cells[t, d]["regime"] for d in densities] for t in temps]
    parts = [_note(f"{study['temperature']} × density, {study['seeds']} pruned models per cell ({study['pairing']} "
                   f"pairing); regime I: mc < -{study['epsilon']:g} nats; II-A: connected, output CKA < "
                   f"{study['delta']:g}; II-B: connected and similar. Val split only.")]
    for title, key in (("val error of the pruned models", "error"), ("mode connectivity mc (nats)", "mc"),
                       ("CKA of the outputs", "cka_outputs")):
        values = {title: [[cells[t, d][key] for d in densities] for t in temps]}
        parts.append(_figure(lambda v=values: phase_figure(temps, densities, v, regimes, study["temperature"]),
                             f"phase diagram: {title}"))
    rows = [(f"{c['temperature']:g}", f"{c['density']:g}", f"{_pct(c['error'])} ± {_pct(c['error_std'])}",
             f"{c['mc']:+.3f}" + (f" ± {c['mc_std']:.3f}" if c.get("mc_std") is not None else ""),
             _fixed(c["cka_outputs"], 3), c["regime"],
             _pct(c.get("scratch_error")) if c.get("scratch_error") is not None else "-")
            for c in study["cells"]]
    parts.append(_table(("T", "density", "pruned error ± sd", "mc ± sd", "CKA", "regime", "scratch-E error"), rows,
                        left=2))
    items = [f"density {a['density']:g}: rule {' → '.join(f'{t:g}' for t in a['walk'])} stops at {a['chosen']:g} "
             f"({_pct(a['chosen_error'])}); measured best {a['best']:g} ({_pct(a['best_error'])})"
             for a in study["advice"]]
    parts.append(Items(items, "verdict"))
    return _Section("regimes", "Three regimes", parts)


def _hparams(doc: Mapping[str, Any]) -> _Section | None:
    """The hyperparameter study (``prunescope hparams`` or ``run --hparams``): landscapes, shifts, verdict."""
    study = doc.get("hparams")
    if not isinstance(study, Mapping) or "landscapes" not in study:
        return None
    grid, search, landscapes = study["grid"], study["search"], study["landscapes"]
    settings = study.get("settings", {})
    parts = [_note(f"Dense search: {search['method']}, {len(search['trials'])} trials, {search['epochs_spent']} "
                   f"epochs, best val {_pct(search['best_value'])} at {_setting(search['best'])}. Grid "
                   f"{' × '.join(grid['axes'])} around it ({len(study['seeds'])} seeds per point; other knobs at the "
                   f"optimum), recovered by {settings.get('recover', '?')} at every degree; val split only. "
                   f"Distributions softmax(acc / τ), τ = {study['temperature']:.3g} (the dense seed-to-seed spread); "
                   "floors: the same measure between dense seeds (95th percentile; 5th for rank agreement).")]
    parts.append(_figure(lambda: search_history_figure(search["trials"]), "dense search history",
                         "Val accuracy of every dense search trial against the epochs spent so far (hollow: "
                         "stopped early by the pruner), and the best so far."))
    if len(grid["axes"]) <= 2:
        means = [_as_rows(ls["mean"]) for ls in landscapes]
        names = (grid["axes"][0], grid["axes"][1] if len(grid["axes"]) > 1 else "")
        ticks = ([f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid["values"][0]],
                 [f"{v:.3g}" if isinstance(v, float) else str(v) for v in grid["values"][1]]
                 if len(grid["axes"]) > 1 else [""])
        panels = [(ls["degree"]["label"], m) for ls, m in zip(landscapes, means, strict=True)]
        marks = [_argmax(m) for m in means]
        parts.append(_figure(lambda: heatmaps_figure(panels, names, ticks, marks, marks[0]),
                             "val accuracy landscapes per degree",
                             "Mean val accuracy over seeds per degree, one colour scale; star: each degree's best "
                             "point, ring: the dense optimum."))
    measures = (("Wasserstein-1 distance", "distance", 1), ("transfer regret (pts)", "regret", 100),
                ("weighted Kendall tau", "rank", 1))
    curves = []
    for title, key, scale in measures:
        judged = [(ls["degree"]["removed"], ls["shift"][key]) for ls in landscapes]
        curves.append((title, [(x, j["mean"] * scale, j["std"] * scale, j["floor"] * scale) for x, j in judged],
                       key == "rank"))
    parts.append(_figure(lambda: shift_figure(curves, "fraction removed"), "landscape shift vs pruning",
                         "Mean ± sd over seed pairs; grey band: the noise floor."))
    rows = []
    for ls in landscapes:
        shift, degree = ls["shift"], ls["degree"]
        moved = "; ".join(f"{axis} {j['mean']:+.2g}{' *' if j['significant'] else ''}"
                          for axis, j in shift["displacement"].items())
        rows.append((degree["label"], _pct(degree["removed"], 0), _pct(degree["one_shot_val_accuracy"]),
                     _pct(max(max(r) for r in _as_rows(ls["mean"]))),
                     *(_judged(shift[key], scale) for _, key, scale in measures), moved))
    parts.append(_table(("degree", "removed", "one-shot val", "best recovered val", "W1 (floor)", "regret pts (floor)",
                         "weighted tau (floor)", f"optimum moved ({', '.join(study['units'].values())})"), rows,
                        caption="* beyond the noise floor", css="wide"))
    parts.append(Items([study["verdict"]["sentence"]], "verdict"))
    return _Section("hparams", "Hyperparameter sensitivity under pruning", parts)


def _judged(judged: Mapping[str, Any], scale: float) -> str:
    mark = " *" if judged["significant"] else ""
    return f"{judged['mean'] * scale:.3g} ± {judged['std'] * scale:.2g} ({judged['floor'] * scale:.3g}){mark}"


def _as_rows(values: Any) -> list[list[float]]:
    """A landscape's mean as rows: 1 axis → one row per point, 3+ axes → averaged over the axes after two."""
    if not isinstance(values[0], list):
        return [[float(v)] for v in values]
    return [[sum(_flatten(cell)) / len(_flatten(cell)) for cell in row] for row in values]


def _flatten(values: Any) -> list[float]:
    return [x for v in values for x in _flatten(v)] if isinstance(values, list) else [float(values)]


def _argmax(rows: list[list[float]]) -> tuple[int, int]:
    return max(((i, j) for i, row in enumerate(rows) for j in range(len(row))), key=lambda ij: rows[ij[0]][ij[1]])


SECTIONS = (_verdict, _settings, _dense, _sensitivity, _allocation, _before_after, _accuracy_vs_sparsity,
            _one_shot_reconstructed, _finetune, _scratch, _recovered, _recovered_channels, _regimes, _hparams)


# ---------------------------------------------------------------------------------------------
# The page

@cache
def _templates() -> jinja2.Environment:
    """The report's templates, package data of prunescope, every value autoescaped."""
    return jinja2.Environment(loader=jinja2.PackageLoader("prunescope.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def _error_section(render: Callable, error: Exception) -> _Section:
    name = render.__name__.strip("_").replace("_", " ")
    return _Section(f"error-{render.__name__.strip('_')}", f"{name} (not rendered)",
                    [Error(f"This part of the result could not be shown: {type(error).__name__}: {error}")])


def render_html(doc: dict[str, Any]) -> str:
    """The whole report page of a checked ``prunescope run`` result document."""
    check_result(doc)
    sections = []
    for render in SECTIONS:
        try:
            section = render(doc)
        except Exception as error:  # a malformed section is shown as such
            section = _error_section(render, error)
        if section is not None:
            sections.append(section)

    model = doc.get("model") if isinstance(doc.get("model"), Mapping) else {}
    dataset = doc.get("dataset") if isinstance(doc.get("dataset"), Mapping) else {}
    title = "prunescope report"
    if model.get("name") or dataset.get("name"):
        title += f": {model.get('name', '?')} on {dataset.get('name', '?')}"
    sparsity = _number(doc.get("sparsity"))
    meta = [f"pruned to {sparsity:.0%} of the weights" if sparsity is not None else None,
            f"created {doc['created']}" if doc.get("created") else None,
            f"prunescope {doc['prunescope_version']}" if doc.get("prunescope_version") else None]
    return _templates().get_template("report.html.j2").render(
        title=title, meta=" · ".join(m for m in meta if m), sections=sections, result_file=RESULT_FILE, schema=SCHEMA,
        version=SCHEMA_VERSION,
    )
