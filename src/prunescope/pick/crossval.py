"""Cross-validation of a pick on the val split, from one scan.

A pick is chosen on the val split and verified on it, so its joint drop measured there is
an in-sample number: the levels and the back-off were selected because they looked good
on those very examples. :func:`cross_validate` estimates the drop on examples the pick
never saw, with no scan beyond the one already made:

1. val is cut into ``k`` stratified, seeded folds (:func:`val_folds`);
2. for fold ``i`` the curves are recomputed on the other ``k - 1`` folds from the scan's
   per-example results (:meth:`prunescope.curves.Curves.on`; nothing is evaluated again),
   the picker picks on them with a per-layer threshold ``t`` and
   :func:`~prunescope.pick.verify.verify` backs the pick off on those same ``k - 1`` folds
   until their joint drop is at most ``t``: the whole of what ``choose`` does, on the fold's
   training part;
3. the joint drop of that verified allocation is measured on fold ``i``, against the dense
   model on the same examples, with its paired interval (the only new evaluations, besides
   the joint ones verify needs on the training part).

``t``, the allowed degradation, bounds both the per-layer drops the picker accepts and the
in-sample joint drop verify backs off to: a pick verified to the user's bound itself lands,
on unseen examples, above it by the optimism of selecting on the same examples, so the
in-sample allowance has to be smaller than the bound for the held-out drop to keep it.
The candidates ``t`` (``THRESHOLD_FACTORS`` × the bound) are cross-validated from the largest
down, and the one chosen is the largest whose held-out drop, averaged over the folds, stays
within the bound (the candidates below it are not evaluated; the smallest candidate, flagged
``holds=False``, when none does). Pickers without a
per-layer threshold (a budget) are cross-validated as they are, their joint drop measured,
not bounded. Every allocation is evaluated on each example at most once
(:class:`~prunescope.pick.verify.ExampleEvaluator`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.model_selection import StratifiedKFold

from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.pickers import EnsemblePicker, KneePicker, Picker, ThresholdPicker
from prunescope.pick.verify import Drop, ExampleEvaluator

DEFAULT_FOLDS = 3
# Candidate allowed degradations, fractions of the bound: never looser in-sample than the bound itself.
THRESHOLD_FACTORS = (0.2, 0.4, 0.6, 0.8, 1.0)


def val_folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` stratified, seeded, disjoint folds of indices ``0 … len(labels) - 1`` covering them all (sorted)."""
    if k < 2:
        raise UsageError(f"cross-validation needs at least 2 folds, got {k}")
    counts = np.bincount(labels)
    if counts[counts > 0].min(initial=len(labels)) < k:
        raise UsageError(f"{k} folds need at least {k} val examples of every class: use fewer folds (--folds)")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(labels)), labels)]


def with_threshold(picker: Picker, threshold: float) -> Picker:
    """``picker`` with its per-target threshold set to ``threshold`` (fraction of the metric).

    Threshold and sconce pickers: ``max_drop``; knee: its fallback's; ensemble: every member's.
    Pickers without one (a budget) are returned unchanged.
    """
    if isinstance(picker, ThresholdPicker):
        return replace(picker, max_drop=threshold)
    if isinstance(picker, KneePicker):
        return replace(picker, fallback_max_drop=threshold)
    if isinstance(picker, EnsemblePicker):
        return replace(picker, members=[with_threshold(m, threshold) for m in picker.members])
    return picker


@dataclass
class FoldResult:
    """One fold: the pick made and verified on ``seen`` (indices into val), its joint drop measured on ``held_out``.

    seen_drop: the verified joint drop on ``seen`` (in-sample for this fold).
    held_out_drop: ``(drop, low, high)`` on ``held_out``, paired against the dense model on the same examples.
    """

    fold: int
    allocation: dict[str, float]
    seen: np.ndarray
    held_out: np.ndarray
    seen_drop: float
    held_out_drop: Drop

    def to_dict(self) -> dict:
        drop, low, high = self.held_out_drop
        return {"fold": self.fold, "allocation": self.allocation, "seen_examples": len(self.seen),
                "held_out_examples": len(self.held_out), "seen_drop": self.seen_drop, "held_out_drop": drop,
                "held_out_low": low, "held_out_high": high}


@dataclass
class Candidate:
    """A per-layer threshold (None: the picker as given) and its folds."""

    threshold: float | None
    folds: list[FoldResult]

    @property
    def held_out(self) -> tuple[float, float]:
        """Held-out joint drop over the folds: mean and standard deviation (fractions of the metric)."""
        drops = [f.held_out_drop[0] for f in self.folds]
        return statistics.fmean(drops), statistics.stdev(drops) if len(drops) > 1 else 0.0

    def to_dict(self) -> dict:
        mean, spread = self.held_out
        return {"threshold": self.threshold, "held_out_mean": mean, "held_out_std": spread,
                "folds": [f.to_dict() for f in self.folds]}


@dataclass
class CrossValidation:
    """The cross-validation of a pick: every candidate threshold and the one chosen.

    bound: the joint drop the held-out mean must stay within (fraction of the metric; inf for
    a budget pick, which is only measured). holds: whether the chosen candidate's held-out
    mean is within it.
    """

    k: int
    seed: int
    bound: float
    candidates: list[Candidate]
    chosen: Candidate
    evaluated: int = 0  # examples evaluated for it (each allocation on each example at most once)
    mode: str = "val"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def conclude(cls, candidates: list[Candidate], *, k: int, seed: int, bound: float, evaluated: int = 0,
                 mode: str = "val") -> CrossValidation:
        """Choose the largest candidate threshold whose held-out mean is within ``bound`` (else the first)."""
        holding = [c for c in candidates if c.held_out[0] <= bound]
        notes = [] if holding else [f"no candidate threshold kept the held-out drop within {bound * 100:g} pts: "
                                    "the smallest was taken"]
        chosen = holding[-1] if holding else candidates[0]
        return cls(k, seed, bound, candidates, chosen, evaluated, mode, notes)

    @property
    def holds(self) -> bool:
        return self.chosen.held_out[0] <= self.bound

    def to_dict(self) -> dict:
        mean, spread = self.chosen.held_out
        bound = None if math.isinf(self.bound) else self.bound
        return {"mode": self.mode, "k": self.k, "seed": self.seed, "bound": bound,
                "threshold": self.chosen.threshold, "held_out_mean": mean, "held_out_std": spread,
                "holds": self.holds, "evaluated_examples": self.evaluated, "notes": self.notes,
                "candidates": [c.to_dict() for c in self.candidates]}


def thresholds_for(picker: Picker, bound: float) -> list[float | None]:
    """Candidate per-layer thresholds of ``picker`` for a joint ``bound``: [None] for a budget picker."""
    if isinstance(picker, BudgetPicker) or math.isinf(bound):
        return [None]
    return sorted({round(f * bound, 12) for f in THRESHOLD_FACTORS})


def cross_validate(
    curves: Curves,
    picker: Picker,
    joint: ExampleEvaluator,
    labels: np.ndarray,
    *,
    bound: float,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    thresholds: Sequence[float | None] | None = None,
) -> CrossValidation:
    """Cross-validate ``picker`` (pick + verify, both at each candidate threshold) on ``k`` folds of val; see the
    module.

    curves: a scan with per-example results on the val split ``joint`` evaluates.
    labels: val labels (N,), for stratified folds.
    bound: allowed joint drop (fraction of the metric; inf: a budget pick, measured only).
    thresholds: candidate per-layer thresholds (None: :func:`thresholds_for`). The result lists those evaluated,
        smallest first.
    """
    folds = val_folds(labels, k, seed)
    everything = np.arange(len(labels))
    seen_curves = [curves.on(np.setdiff1d(everything, held)) for held in folds]
    before = joint.evaluated
    candidates = []
    # From the largest down: the first that holds is the one chosen, so no smaller one needs evaluating.
    for threshold in reversed(thresholds_for(picker, bound) if thresholds is None else sorted(thresholds)):
        tuned = picker if threshold is None else with_threshold(picker, threshold)
        results = []
        for i, held in enumerate(folds):
            seen = np.setdiff1d(everything, held)
            allowed = bound if threshold is None else threshold
            verified = joint.verify(tuned.pick(seen_curves[i]), seen_curves[i], seen, max_drop=allowed)
            results.append(FoldResult(i, verified.allocation, seen, held, verified.measured_drop,
                                      joint.drop(verified.allocation, held)))
        candidates.insert(0, Candidate(threshold, results))
        if candidates[0].held_out[0] <= bound:
            break
    return CrossValidation.conclude(candidates, k=k, seed=seed, bound=bound, evaluated=joint.evaluated - before)
