"""The verdict of a hyperparameter study: up to which degree of pruning the dense hyperparameters hold.

The dense hyperparameters **hold** at a degree when both the transfer regret and the
Wasserstein distance of its landscape are within their noise floors (see
:mod:`prunescope.hparams.shift`). The verdict is the highest degree up to which they hold at
every degree (a first failure ends it, even if a later degree happens to pass again), and
the knob whose optimum moves first: at the lowest degree where some axis' optimum
displacement exceeds its floor, the axis that exceeds it most (relative to its floor), and
the sign of its mean displacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from prunescope.hparams.shift import Shift


@dataclass(frozen=True)
class Degree:
    """One degree of pruning: its label (e.g. ``"50%"`` or ``"0.5x MACs"``), how much is removed, its shift."""

    label: str
    removed: float
    shift: Shift


@dataclass(frozen=True)
class Move:
    """The first optimum that moves beyond noise: axis, degree, direction (+1 up, −1 down), mean displacement."""

    axis: str
    degree: str
    direction: int
    by: float
    unit: str


@dataclass(frozen=True)
class Verdict:
    holds_until: str | None
    first_failure: str | None
    moves_first: Move | None
    sentence: str

    def to_dict(self) -> dict:
        return {"holds_until": self.holds_until, "first_failure": self.first_failure,
                "moves_first": asdict(self.moves_first) if self.moves_first else None, "sentence": self.sentence}


def holds(shift: Shift) -> bool:
    return not shift.regret.significant and not shift.distance.significant


def first_move(degrees: Sequence[Degree], units: dict[str, str]) -> Move | None:
    """At the lowest degree where an optimum moves beyond its floor, the axis moving most relative to its floor."""
    for degree in sorted(degrees, key=lambda d: d.removed):
        moved = {axis: judged for axis, judged in degree.shift.displacement.items() if judged.significant}
        if moved:
            axis = max(moved, key=lambda a: abs(moved[a].mean) / max(moved[a].floor, 1e-12))
            mean = moved[axis].mean
            return Move(axis, degree.label, 1 if mean > 0 else -1, mean, units.get(axis, ""))
    return None


def verdict(degrees: Sequence[Degree], units: dict[str, str]) -> Verdict:
    """The verdict over ``degrees`` (any order); the least pruned one is the reference and holds by definition."""
    ordered = sorted(degrees, key=lambda d: d.removed)
    last, failure = ordered[0].label, None
    for degree in ordered[1:]:
        if not holds(degree.shift):
            failure = degree.label
            break
        last = degree.label
    move = first_move(ordered[1:], units)
    if failure is None:
        head = f"the dense hyperparameters hold at every degree tested, up to {last}"
    elif last == ordered[0].label:
        head = f"the dense hyperparameters already fail at {failure}"
    else:
        head = f"the dense hyperparameters hold up to {last} and fail at {failure}"
    head += " (regret and landscape distance within the seed-to-seed noise floor)" if failure is None else (
        " (regret or landscape distance beyond the seed-to-seed noise floor)")
    if move is None:
        tail = "; no optimum moved beyond noise"
    else:
        way = "up" if move.direction > 0 else "down"
        tail = f"; {move.axis} moves first, {way} by {abs(move.by):.2g} {move.unit} at {move.degree}"
    return Verdict(last, failure, move, head + tail)
