"""Plain-language conclusions of a run, one sentence each, from numbers already measured."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prunescope.curves import Curves
from prunescope.scores import Score

ACCURACY = Score("accuracy")


def _pts(fraction: float) -> str:
    return f"{fraction * 100:.1f}"


def predicted_drop_text(predicted: float, reference: float) -> str:
    """A predicted joint drop in signed points, never more than the dense metric it is taken from.

    The prediction adds up the layers' drops measured one at a time; far from dense that sum can
    exceed the dense metric itself, a drop no model can have, so it then reads "over X".
    """
    if predicted > reference:
        return f"over {reference * 100:.1f} (the per-layer drops add up to more than the dense value)"
    return f"{predicted * 100:+.2f}"


def small_val_warning(examples: int, tolerance: float) -> str | None:
    """A warning when one val example weighs more than ``tolerance`` (None when val is large enough).

    With n examples an accuracy moves in steps of 1/n: a drop is 0 or at least one example, so a
    bound below one example cannot be told apart from no change at all.
    """
    step = 1 / examples
    if step <= tolerance:
        return None
    return (f"val has {examples} examples: one example is {_pts(step)} pts, more than the {tolerance * 100:g}-pt "
            f"tolerance, so any drop measured is 0 or at least {_pts(step)} pts; use a larger val (at least "
            f"{math.ceil(1 / tolerance)} examples: --data-arg val_fraction=…, or more data) and cross-validate the "
            "pick (--folds K) to see how far its drop is noise")


def layer_sentences(curves: Curves, tolerance: float, score: Score = ACCURACY) -> list[str]:
    """How far each layer can be pruned alone, others dense, within ``tolerance`` (a score drop) on val."""
    sentences = []
    bound = score.drop_text(tolerance, sign=False)
    for name, curve in curves.curves.items():
        within = [p for p in curve.sorted_points() if curves.dense_at(p.n).value - p.value <= tolerance]
        if within:
            sentences.append(f"layer {name} tolerates {within[-1].sparsity:.0%} sparsity alone (val drop ≤ {bound})")
        else:
            sentences.append(f"layer {name} is sensitive: every level scanned costs more than {bound}")
    return sentences


def crossval_clause(crossval: Mapping[str, Any] | None, score: Score = ACCURACY) -> str:
    """``; cross-validated on k val folds: held-out drop m ± s pts …`` for a pick's ``crossval`` dict ('' without)."""
    if not crossval:
        return ""
    where = "folds of train, one model each" if crossval.get("mode") == "retrain" else "val folds"
    mean, std = (score.tolerance(crossval[key]) * 100 for key in ("held_out_mean", "held_out_std"))
    unit = "% perplexity" if score.lower_is_better else " pts"
    text = f"; cross-validated on {crossval['k']} {where}: held-out drop {mean:+.2f} ± {std:.2f}{unit}"
    if crossval.get("threshold") is not None:
        text += f", allowing {score.drop_text(crossval['threshold'], sign=False)} per layer and jointly in-sample"
    if not crossval.get("holds", True):
        text += ", above the bound"
    return text


def method_sentence(sparsity: float, dense: Mapping[str, Any], methods: list[Mapping[str, Any]],
                    score: Score = ACCURACY) -> str:
    """At the compared sparsity: each method's test-accuracy loss after fine-tuning, ± its 95% half-interval (a
    language model's test perplexity and its change from dense)."""
    if score.lower_is_better:
        parts = [f"{m['method']} {score.measured_text(m['test'])} ({score.change_text(m['test'], dense)})"
                 for m in methods if m.get("test") is not None]
        return (f"at {sparsity:.0%} overall after fine-tuning, test perplexity (dense {score.measured_text(dense)}): "
                + ", ".join(parts)) if parts else f"no method reached {sparsity:.0%}"
    parts = []
    for m in methods:
        if m.get("test") is None:
            continue
        low, high = m["test"]["accuracy_ci"]
        loss = dense["accuracy"] - m["test"]["accuracy"]
        if round(loss * 1000) == 0:  # equal to the shown precision
            parts.append(f"{m['method']} matches dense (± {_pts((high - low) / 2)} pts)")
        else:
            verb = "loses" if loss > 0 else "gains"
            parts.append(f"{m['method']} {verb} {_pts(abs(loss))} ± {_pts((high - low) / 2)} pts")
    if not parts:
        return f"no method reached {sparsity:.0%}"
    return f"at {sparsity:.0%} overall after fine-tuning: " + ", ".join(parts) + " of test accuracy"


def scratch_sentence(ours: Mapping[str, Any] | None, scratch: list[Mapping[str, Any]],
                     score: Score = ACCURACY) -> str | None:
    """Did fine-tuning the pruned model beat training the same sparse architecture from scratch (on test)?"""
    if ours is None or ours.get("test") is None or not scratch:
        return None
    comparisons = []
    for run in scratch:
        name = f"scratch-{run['mode']} ({run['epochs']} epochs)"
        if score.lower_is_better:  # perplexities: theirs relative to ours
            difference = score.of(ours["test"]) - score.of(run["test"])
            against = f"{score.measured_text(run['test'])}, {score.change_text(run['test'], ours['test'])}"
            word = "matched" if round(difference * 1e4) == 0 else "beat" if difference > 0 else "trailed"
            comparisons.append(f"{word} {name} (test perplexity {against})")
            continue
        difference = ours["test"]["accuracy"] - run["test"]["accuracy"]
        if round(difference * 1000) == 0:  # equal to the shown precision
            comparisons.append(f"matched {name}")
        else:
            word = "beat" if difference > 0 else "trailed"
            comparisons.append(f"{word} {name} by {_pts(abs(difference))} pts")
    return "fine-tuning ours " + "; ".join(comparisons)


def reconstruction_sentence(sparsity: float, plain: Mapping[str, Any], reconstructed: Mapping[str, Any],
                            score: Score = ACCURACY) -> str:
    """One-shot val metric at ``sparsity`` of each method with masks alone → with layer-wise reconstruction."""
    parts = []
    for before, after in zip(plain["rows"], reconstructed["rows"], strict=True):
        if before["sparsity"] == sparsity and before.get("val") and after.get("val"):
            parts.append(f"{before['method']} {score.measured_text(before['val'])} → "
                         f"{score.measured_text(after['val'])}")
    if not parts:
        return f"no method reached {sparsity:.0%} one-shot"
    return (f"one-shot at {sparsity:.0%}, val {score.label} with masks alone → re-fitted by layer-wise reconstruction "
            f"({reconstructed['reconstruct']}, no labels): " + ", ".join(parts))


def _widened(reach: Mapping[str, Any], unit: str = "sparsity") -> str:
    """Where the swept list did not bracket the bound: which points were added, or nothing."""
    widened = reach.get("widened") or []
    if not widened:
        return ""
    added = ", ".join(f"{s:.1%}" for s in widened)
    return f"; the {unit} list given did not bracket the bound, so it was widened with {added}"


def recovered_sentence(recovered: Mapping[str, Any], max_drop: float, score: Score = ACCURACY) -> str:
    """How far the whole model goes within ``max_drop`` (a score drop) after fine-tuning, its test metric there,
    and AGP there."""
    epochs = recovered["epochs"]
    widened = _widened(recovered["reach"])
    bound = score.drop_text(max_drop, sign=False)
    if recovered["answer"] == 0:
        return (f"with {epochs} epochs of fine-tuning no swept sparsity stays within {bound} on val "
                f"(lowest tried: {recovered['reach']['points'][0]['sparsity']:.1%}){widened}")
    text = (f"with {epochs} epochs of fine-tuning the whole model can be pruned to {recovered['answer']:.1%} within "
            f"{bound} on val (test {score.label} {score.measured_text(recovered['test'])}){widened}")
    gradual = recovered.get("gradual")
    if gradual and gradual.get("error"):
        text += f"; gradual AGP to the same sparsity could not run ({gradual['error']})"
    elif gradual:
        text += (f"; gradual AGP to the same sparsity in {gradual['epochs']} epochs: test "
                 f"{score.measured_text(gradual['test'])}")
    return text


def channel_recovered_sentence(recovered: Mapping[str, Any], max_drop: float, score: Score = ACCURACY) -> str:
    """How many times fewer MACs removing channels reaches within ``max_drop`` after fine-tuning, and its speed-up."""
    epochs = recovered["epochs"]
    widened = _widened(recovered["reach"], "list of MAC cuts")
    bound = score.drop_text(max_drop, sign=False)
    if recovered["answer"] == 0:
        return (f"with {epochs} epochs of fine-tuning no swept cut of channels stays within {bound} on "
                f"val (fewest MACs removed: {recovered['reach']['points'][0]['sparsity']:.0%}){widened}")
    text = (f"with {epochs} epochs of fine-tuning, removing channels cuts the MACs {recovered['mac_reduction']:.2f}× "
            f"within {bound} on val (test {score.label} {score.measured_text(recovered['test'])}){widened}")
    measured = recovered.get("measure") or {}
    if measured.get("speedup"):
        batch = max(measured["speedup"], key=int)
        low, high = measured["speedup_range"][batch]
        text += (f"; measured speed-up {measured['speedup'][batch]:.2f}× at batch {batch} "
                 f"({low:.2f}–{high:.2f} over rounds)")
    return text


def selection_sentence(rows: list[Mapping[str, Any]]) -> str | None:
    """The selection effort of ``ours`` on val, per sparsity, next to the baselines' one evaluation each.

    ``rows``: comparison rows as in the result document (``ours``'s ``details.val_evaluations``).
    """
    efforts = [(r["sparsity"], r["details"]["val_evaluations"]) for r in rows
               if r["method"] == "ours" and "val_evaluations" in (r.get("details") or {})]
    if not efforts:
        return None
    parts = [f"{e['total']} at {s:.0%} ({e['candidates']} candidates + {e['refinement']} refinement moves)"
             for s, e in efforts]
    return ("ours was selected with joint val evaluations: " + ", ".join(parts)
            + "; every baseline is one evaluation, with no selection")
