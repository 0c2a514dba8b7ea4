"""Plain-language conclusions of a run, one sentence each, from numbers already measured."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prunescope.curves import Curves


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


def layer_sentences(curves: Curves, tolerance: float) -> list[str]:
    """How far each layer can be pruned alone, others dense, within ``tolerance`` on val."""
    sentences = []
    for name, curve in curves.curves.items():
        within = [p for p in curve.sorted_points() if curves.dense_at(p.n).value - p.value <= tolerance]
        if within:
            sentences.append(f"layer {name} tolerates {within[-1].sparsity:.0%} sparsity alone "
                             f"(val drop ≤ {_pts(tolerance)} pts)")
        else:
            sentences.append(f"layer {name} is sensitive: every level scanned costs more than {_pts(tolerance)} pts")
    return sentences


def crossval_clause(crossval: Mapping[str, Any] | None) -> str:
    """``; cross-validated on k val folds: held-out drop m ± s pts …`` for a pick's ``crossval`` dict ('' without)."""
    if not crossval:
        return ""
    where = "folds of train, one model each" if crossval.get("mode") == "retrain" else "val folds"
    text = (f"; cross-validated on {crossval['k']} {where}: held-out drop {crossval['held_out_mean'] * 100:+.2f} "
            f"± {crossval['held_out_std'] * 100:.2f} pts")
    if crossval.get("threshold") is not None:
        text += f", allowing {crossval['threshold'] * 100:g} pts per layer and jointly in-sample"
    if not crossval.get("holds", True):
        text += ", above the bound"
    return text


def method_sentence(sparsity: float, dense: Mapping[str, Any], methods: list[Mapping[str, Any]]) -> str:
    """At the compared sparsity: each method's test-accuracy loss after fine-tuning, ± its 95% half-interval."""
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


def scratch_sentence(ours: Mapping[str, Any] | None, scratch: list[Mapping[str, Any]]) -> str | None:
    """Did fine-tuning the pruned model beat training the same sparse architecture from scratch?"""
    if ours is None or ours.get("test") is None or not scratch:
        return None
    comparisons = []
    for run in scratch:
        difference = ours["test"]["accuracy"] - run["test"]["accuracy"]
        name = f"scratch-{run['mode']} ({run['epochs']} epochs)"
        if round(difference * 1000) == 0:  # equal to the shown precision
            comparisons.append(f"matched {name}")
        else:
            word = "beat" if difference > 0 else "trailed"
            comparisons.append(f"{word} {name} by {_pts(abs(difference))} pts")
    return "fine-tuning ours " + "; ".join(comparisons)


def reconstruction_sentence(sparsity: float, plain: Mapping[str, Any], reconstructed: Mapping[str, Any]) -> str:
    """One-shot val accuracy at ``sparsity`` of each method with masks alone → with layer-wise reconstruction."""
    parts = []
    for before, after in zip(plain["rows"], reconstructed["rows"], strict=True):
        if before["sparsity"] == sparsity and before.get("val") and after.get("val"):
            parts.append(f"{before['method']} {before['val']['accuracy']:.1%} → {after['val']['accuracy']:.1%}")
    if not parts:
        return f"no method reached {sparsity:.0%} one-shot"
    return (f"one-shot at {sparsity:.0%}, val accuracy with masks alone → re-fitted by layer-wise reconstruction "
            f"({reconstructed['reconstruct']}, no labels): " + ", ".join(parts))


def _widened(reach: Mapping[str, Any], unit: str = "sparsity") -> str:
    """Where the swept list did not bracket the bound: which points were added, or nothing."""
    widened = reach.get("widened") or []
    if not widened:
        return ""
    added = ", ".join(f"{s:.1%}" for s in widened)
    return f"; the {unit} list given did not bracket the bound, so it was widened with {added}"


def recovered_sentence(recovered: Mapping[str, Any], max_drop: float) -> str:
    """How far the whole model goes within ``max_drop`` after fine-tuning, its test accuracy there, and AGP there."""
    epochs = recovered["epochs"]
    widened = _widened(recovered["reach"])
    if recovered["answer"] == 0:
        return (f"with {epochs} epochs of fine-tuning no swept sparsity stays within {_pts(max_drop)} pts on val "
                f"(lowest tried: {recovered['reach']['points'][0]['sparsity']:.1%}){widened}")
    text = (f"with {epochs} epochs of fine-tuning the whole model can be pruned to {recovered['answer']:.1%} within "
            f"{_pts(max_drop)} pts on val (test {recovered['test']['accuracy']:.2%}){widened}")
    gradual = recovered.get("gradual")
    if gradual and gradual.get("error"):
        text += f"; gradual AGP to the same sparsity could not run ({gradual['error']})"
    elif gradual:
        text += (f"; gradual AGP to the same sparsity in {gradual['epochs']} epochs: test "
                 f"{gradual['test']['accuracy']:.2%}")
    return text


def channel_recovered_sentence(recovered: Mapping[str, Any], max_drop: float) -> str:
    """How many times fewer MACs removing channels reaches within ``max_drop`` after fine-tuning, and its speed-up."""
    epochs = recovered["epochs"]
    widened = _widened(recovered["reach"], "list of MAC cuts")
    if recovered["answer"] == 0:
        return (f"with {epochs} epochs of fine-tuning no swept cut of channels stays within {_pts(max_drop)} pts on "
                f"val (fewest MACs removed: {recovered['reach']['points'][0]['sparsity']:.0%}){widened}")
    text = (f"with {epochs} epochs of fine-tuning, removing channels cuts the MACs {recovered['mac_reduction']:.2f}× "
            f"within {_pts(max_drop)} pts on val (test {recovered['test']['accuracy']:.2%}){widened}")
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
