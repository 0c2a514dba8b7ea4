"""The page's sections on recovery: one-shot with reconstruction, fine-tuning, scratch baselines, the recovered
answer (weights and channels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunescope.report.blocks import Cell, Error, Items, Section, figure_of, note_of, table_of
from prunescope.report.formats import (
    ci_of,
    finished,
    methods_of,
    num,
    pct,
    setting,
)
from prunescope.report.plots import (
    epoch_curves_figure,
    recovered_figure,
)
from prunescope.report.quality import Quality


def _one_shot_reconstructed(doc: Mapping[str, Any]) -> Section | None:
    """The one-shot comparison pruned by layer-wise reconstruction, row by row beside masks alone."""
    rebuilt = doc.get("one_shot_reconstructed")
    if not isinstance(rebuilt, Mapping) or not isinstance(rebuilt.get("rows"), list):
        return None
    one_shot = doc.get("one_shot") if isinstance(doc.get("one_shot"), Mapping) else {}
    plain = {(r.get("method"), num(r.get("sparsity"))): r for r in one_shot.get("rows") or []
             if isinstance(r, Mapping)}
    rows, refused, quality = [], [], Quality.of(doc)
    for r in (r for r in rebuilt["rows"] if isinstance(r, Mapping)):
        sparsity, method = num(r.get("sparsity")), str(r.get("method", "?"))
        before = quality.value(plain.get((r.get("method"), sparsity), {}).get("val"))
        rows.append((pct(sparsity, 1), method, quality.text(before), quality.cell(r.get("val")),
                     quality.change(quality.value(r.get("val")), before), quality.cell(r.get("test")), "0"))
        if r.get("error"):
            refused.append(Error(f"{method} at {pct(sparsity, 1)}: {r['error']}"))
    if not rows:
        return None
    settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
    mode = rebuilt.get("reconstruct")
    how = ("its mask chosen by OBS saliency and its kept weights re-fitted" if mode == "obs"
           else "the criterion's mask kept and its kept weights re-fitted")
    parts = [note_of(f"Every method's allocation pruned again, one-shot (0 fine-tuning epochs), each layer with {how} "
                   f"by layer-wise reconstruction ({setting(mode)}) on {setting(settings.get('calibration'))} train "
                   "examples (no labels), so that its outputs change the least. Same removed counts as with masks "
                   "alone; val only unless a test column is filled."),
             table_of(("sparsity", "method", f"val {quality.short}, masks alone",
                       f"val {quality.short}, reconstructed", f"Δ val ({quality.change_unit})",
                       f"test {quality.short}, reconstructed", "epochs"), rows,
                      caption=f"one-shot {quality.name} with masks alone and with layer-wise reconstruction", left=2)]
    fallback = rebuilt.get("fallback")
    if isinstance(fallback, Mapping) and fallback:
        parts.append(note_of("Pruned with masks alone, not reconstructed: "
                           + "; ".join(f"{name} ({why})" for name, why in fallback.items()) + "."))
    return Section("reconstructed", "One-shot with layer-wise reconstruction", parts + refused)


def _recovered(doc: Mapping[str, Any]) -> Section | None:
    """How far after fine-tuning: the recovered sweep of ours and a baseline, the bound and the answer."""
    recovered = doc.get("recovered")
    if not isinstance(recovered, Mapping) or not isinstance(recovered.get("curves"), Mapping):
        return None
    reach = recovered.get("reach") if isinstance(recovered.get("reach"), Mapping) else {}
    quality = Quality.of(recovered)  # its scores: accuracy, or minus log-perplexity
    dense_score, max_drop = num(recovered.get("dense_val")), num(reach.get("max_drop"))
    dense = quality.of_score(dense_score)
    answer, epochs = num(recovered.get("answer")), recovered.get("epochs")
    methods = list(recovered["curves"])
    points = sorted(((float(p["sparsity"]), methods.index(m), m, quality.of_score(num(p.get("val"))))
                     for m, listed in recovered["curves"].items() for p in listed if isinstance(p, Mapping)),
                    key=lambda entry: entry[:2])
    test = recovered.get("test")
    rows = [(Cell(pct(s, 1), em=bool(answer) and s == answer), m, "not reached" if val is None else quality.text(val),
             quality.cell(test) if m == "ours" and answer and s == answer else "–", setting(epochs))
            for s, _, m, val in points]
    gradual = recovered.get("gradual")
    marks = {}
    if answer and quality.value(test) is not None:
        marks["ours at the answer, test"] = (answer, quality.value(test))
    if isinstance(gradual, Mapping):
        val = Cell(f"not run: {gradual['error']}") if gradual.get("error") else quality.cell(gradual.get("val"))
        rows.append((pct(gradual.get("sparsity"), 1), "gradual (AGP)", val, quality.cell(gradual.get("test")),
                     setting(gradual.get("epochs"))))
        if quality.value(gradual.get("val")) is not None:
            marks["gradual (AGP), val"] = (float(gradual["sparsity"]), quality.value(gradual.get("val")))
    if not rows:
        return None
    bound = None if dense_score is None or max_drop is None else quality.of_score(dense_score - max_drop)
    allowed = quality.drop(max_drop)
    parts = [note_of(f"{' and '.join(methods)}, each fine-tuned {setting(epochs)} epochs from the dense weights at "
                   "every sparsity of the sweep, judged on val; ours' sweep is widened and bisected to the highest "
                   f"sparsity within {allowed} of the dense val {quality.name}, below every failure (the answer, "
                   "emphasised). Test is read once: for ours at the answer and for gradual (AGP) pruning to it with "
                   "the same epochs.")]
    series = {m: [(s, val) for s, _, name, val in points if name == m and val is not None] for m in methods}
    if bound is not None and dense is not None and any(series.values()):
        parts.append(figure_of(lambda: recovered_figure(series, dense, bound, answer, marks, quality.name),
                             f"val {quality.name} after fine-tuning versus sparsity, with the bound and the answer"))
    limit = "≤" if quality.perplexity else "≥"
    parts.append(table_of(("sparsity", "method", f"val {quality.short}", f"test {quality.short}", "epochs"), rows,
                        caption=f"{quality.name} after fine-tuning; answer {pct(answer, 1) if answer else 'none'}"
                                + (f", bound: val {limit} {quality.text(bound)}" if bound is not None else ""),
                        left=2))
    return Section("recovered", "How far after fine-tuning", parts)


def _recovered_channels(doc: Mapping[str, Any]) -> Section | None:
    """How many times fewer MACs removing channels reaches after fine-tuning, and the speed-up measured there."""
    found = doc.get("recovered_channels")
    if not isinstance(found, Mapping) or not isinstance(found.get("points"), list):
        return None
    reach = found.get("reach") if isinstance(found.get("reach"), Mapping) else {}
    quality = Quality.of(found)
    answer, epochs, max_drop = num(found.get("answer")), found.get("epochs"), num(reach.get("max_drop"))
    dense_macs = num(found.get("dense_macs"))
    rows = []
    for point in found["points"]:
        if not isinstance(point, Mapping):
            continue
        removed = num(point.get("removed_macs"))
        at_answer = bool(answer) and removed == answer
        rows.append((Cell(pct(removed, 0), em=at_answer), setting(point.get("params")), setting(point.get("macs")),
                     "not reached" if point.get("val") is None else quality.text(quality.of_score(point["val"])),
                     quality.cell(found.get("test")) if at_answer else "–", setting(epochs)))
    if not rows:
        return None
    allowed = quality.drop(max_drop)
    parts = [note_of(f"For each fraction of the dense MACs to remove, the budget pick on a channel scan chooses how "
                   f"many channels each group keeps; that smaller model is fine-tuned {setting(epochs)} epochs and "
                   f"judged on val, widened and bisected to the largest cut within {allowed} (the answer, "
                   "emphasised). Test is read once, at the answer.")]
    parts.append(table_of(("MACs removed", "params", "MACs / sample", f"val {quality.short}", f"test {quality.short}",
                           "epochs"), rows,
                        caption="whole channels removed, then fine-tuned" + (
                            f"; dense {dense_macs:,.0f} MACs / sample" if dense_macs else "")))
    measured = found.get("measure")
    if isinstance(measured, Mapping) and isinstance(measured.get("speedup"), Mapping):
        ranges = measured.get("speedup_range") or {}
        timing = [(batch, f"{num(value):.2f}×", "–" if batch not in ranges else
                   f"{ranges[batch][0]:.2f}–{ranges[batch][1]:.2f}×") for batch, value in measured["speedup"].items()]
        parts.append(table_of(("batch", "speed-up (median)", "range over rounds"), timing,
                            caption=f"the answer ({num(found.get('mac_reduction')):.2f}× fewer MACs) timed "
                                    "against the dense model, side by side"))
    return Section("recovered-channels", "How far in whole channels, after fine-tuning", parts)


def _epoch_series(history: Any, key: str = "val_accuracy") -> list[tuple[float, float]]:
    if not isinstance(history, list):
        return []
    points = []
    for i, record in enumerate(history):
        if isinstance(record, Mapping) and num(record.get(key)) is not None:
            points.append((num(record.get("epoch")) or i + 1, float(record[key])))
    return points


def _history_key(quality: Quality) -> str:
    """The epoch records' field of the val metric."""
    return f"val_{quality.name}"


def _finetune(doc: Mapping[str, Any]) -> Section | None:
    series, early, quality = {}, [], Quality.of(doc)
    for m in methods_of(doc):
        finetune = m.get("finetune")
        if not finished(m) or not isinstance(finetune, Mapping):
            continue
        points = _epoch_series(finetune.get("history"), _history_key(quality))
        if points:
            series[str(m.get("method", "?"))] = points
            if finetune.get("stopped_early"):
                early.append(f"{m.get('method', '?')} after epoch {points[-1][0]:g}")
    if not series:
        return None
    dense = doc.get("dense") if isinstance(doc.get("dense"), Mapping) else {}
    reference = quality.value(dense.get("val"))
    label = f"val {quality.name}"
    parts = [figure_of(lambda: epoch_curves_figure(series, label, "fine-tuning after pruning", reference,
                                                 f"dense {label}"), f"{label} per fine-tuning epoch")]
    parts.append(note_of("Stopped early (no further improvement on val): " + "; ".join(early) + "." if early
                       else "Every method fine-tuned for all its epochs."))
    return Section("finetune", "Fine-tuning curves", parts)


def _compare_sentence(mode: str, epochs: Any, of: str, tuned: Mapping[str, Any], scratch: Mapping[str, Any],
                      sparsity: float | None, quality: Quality) -> str:
    """Plain words: did fine-tuning ``of`` beat training the same sparse network from scratch?"""
    at = f" at {sparsity:.0%} sparsity" if sparsity is not None else ""
    name = f"training from scratch ({mode}{f', {epochs} epochs' if epochs is not None else ''})"
    values = {split: (quality.value(tuned.get(split)), quality.value(scratch.get(split))) for split in ("val", "test")}
    known = {split: pair for split, pair in values.items() if None not in pair}
    if not known:
        return f"{name[0].upper() + name[1:]}: no {quality.name} to compare with {of} fine-tuned."
    detail = ", ".join(f"{split} {quality.text(a)} vs {quality.text(b)} ({quality.change(a, b)} "
                       f"{quality.change_unit})" for split, (a, b) in known.items())
    # better: higher accuracy, or lower perplexity
    gains = {split: (b - a if quality.perplexity else a - b) for split, (a, b) in known.items()}
    if all(d > 0 for d in gains.values()):
        sentence = f"Fine-tuning {of} beat {name}{at}: {detail}."
    elif all(d < 0 for d in gains.values()):
        sentence = f"{name[0].upper() + name[1:]} beat fine-tuning {of}{at}: {detail}."
    else:
        sentence = f"No clear winner between fine-tuning {of} and {name}{at}: {detail}."
    split = "test" if "test" in known else "val"
    a, b = ci_of(tuned.get(split)), ci_of(scratch.get(split))
    if not quality.perplexity and a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]:
        sentence += f" The {split} 95% intervals overlap, so the difference may be noise."
    return sentence


def _scratch(doc: Mapping[str, Any]) -> Section | None:
    scratch = [s for s in doc.get("scratch") or [] if isinstance(s, Mapping)] \
        if isinstance(doc.get("scratch"), list) else []
    if not scratch:
        return None
    by_method = {str(m.get("method")): m for m in methods_of(doc) if finished(m)}
    sparsity = num(doc.get("sparsity"))
    rows, sentences, series = [], [], {}
    dashed, quality = [], Quality.of(doc)
    key = _history_key(quality)
    for of in dict.fromkeys(str(s.get("allocation_of", "ours")) for s in scratch):
        tuned = by_method.get(of)
        if tuned is not None:
            history = tuned.get("finetune", {}).get("history") if isinstance(tuned.get("finetune"), Mapping) else None
            rows.append((f"{of}, pruned and fine-tuned",
                         str(len(history)) if isinstance(history, list) else "–",
                         quality.cell(tuned.get("val")), quality.cell(tuned.get("test")), "–", "–"))
            if _epoch_series(history, key):
                series[f"{of} fine-tuned"] = _epoch_series(history, key)
    for s in scratch:
        of = str(s.get("allocation_of", "ours"))
        mode = str(s.get("mode", "?"))
        tuned = by_method.get(of, {})
        rows.append((
            f"scratch-{mode}, allocation of {of}", setting(s.get("epochs")), quality.cell(s.get("val")),
            quality.cell(s.get("test")), quality.change(quality.value(tuned.get("val")), quality.value(s.get("val"))),
            quality.change(quality.value(tuned.get("test")), quality.value(s.get("test"))),
        ))
        if tuned:
            sentences.append(_compare_sentence(mode, s.get("epochs"), of, tuned, s, sparsity, quality))
        else:
            sentences.append(f"Scratch-{mode}: {of} has no fine-tuned result to compare with.")
        if _epoch_series(s.get("history"), key):
            label = f"scratch-{mode}"
            series[label] = _epoch_series(s.get("history"), key)
            dashed.append(label)
    parts = [Items(sentences),
             table_of(("model", "epochs", f"val {quality.short}", f"test {quality.short}",
                       f"fine-tuned vs scratch, val ({quality.change_unit})",
                       f"fine-tuned vs scratch, test ({quality.change_unit})"), rows,
                    caption="fine-tuning the pruned network vs training the same sparse network from scratch"),
             note_of("Scratch-E trains the sparse network (same mask, fresh weights) for as many epochs as the "
                   "dense model; Scratch-B for the same compute budget, so more epochs.")]
    if series:
        parts.append(figure_of(lambda: epoch_curves_figure(series, f"val {quality.name}", "fine-tuned vs from scratch",
                                                         dashed=dashed),
                             f"val {quality.name} per epoch, fine-tuned and from scratch"))
    return Section("scratch", "Fine-tuning vs training from scratch", parts)


SECTIONS = (_one_shot_reconstructed, _finetune, _scratch, _recovered, _recovered_channels)
