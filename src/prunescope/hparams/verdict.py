"""The verdict of a hyperparameter study: up to which degree of pruning the dense hyperparameters hold.

The dense hyperparameters **hold** at a degree when both the transfer regret and the
Wasserstein distance of its landscape are within their noise floors (see
:mod:`prunescope.hparams.shift`). The verdict is the highest degree up to which they hold at
every degree (a first failure ends it, even if a later degree happens to pass again), and
the knob whose optimum moves first: at the lowest degree where some axis' optimum
displacement exceeds its floor, the axis that exceeds it most (relative to its floor), and
the sign of its mean displacement.

The answer is also said as the study asks it: "up to X× fewer MACs (or weights) the dense
hyperparameters hold; beyond, move lr by …": X = 1 / (1 − removed) at the last degree that
holds, and the advice is, at the first degree that fails, the mean optimum displacement of
every axis that moved beyond its floor (a factor on a log axis: 10 ** decades).
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
    reduction: float = 1.0  # X of "up to X× fewer": 1 / (1 − removed) at the last degree that holds
    advice: tuple[Move, ...] = ()  # at the first failure, every axis whose optimum moved beyond its floor
    answer: str = ""

    def to_dict(self) -> dict:
        return {"holds_until": self.holds_until, "first_failure": self.first_failure,
                "moves_first": asdict(self.moves_first) if self.moves_first else None, "sentence": self.sentence,
                "reduction": self.reduction, "advice": [asdict(m) for m in self.advice], "answer": self.answer}


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


def moves_at(degree: Degree, units: dict[str, str]) -> tuple[Move, ...]:
    """Every axis whose optimum moved beyond its floor at ``degree``, with its mean displacement."""
    return tuple(Move(axis, degree.label, 1 if judged.mean > 0 else -1, judged.mean, units.get(axis, ""))
                 for axis, judged in degree.shift.displacement.items() if judged.significant)


def _how(move: Move) -> str:
    if move.unit == "decades":
        return f"{move.axis} by x{10 ** move.by:.2g} ({move.by:+.2g} decades)"
    return f"{move.axis} by {move.by:+.2g}" + ("" if move.unit == move.axis else f" {move.unit}")


def answer(last: Degree, failure: Degree | None, advice: Sequence[Move], resource: str) -> str:
    """"up to X× fewer <resource> the dense hyperparameters hold; beyond, move …" (X from ``last.removed``)."""
    reduction = 1 / max(1 - last.removed, 1e-12)
    if failure is None:
        return f"up to {reduction:.2g}x fewer {resource} (every degree tested) the dense hyperparameters hold"
    head = f"up to {reduction:.2g}x fewer {resource} the dense hyperparameters hold"
    beyond = 1 / max(1 - failure.removed, 1e-12)
    if not advice:
        return head + f"; at {beyond:.2g}x fewer they fail but no optimum moved beyond noise: re-tune there"
    return head + f"; beyond (at {beyond:.2g}x fewer), move " + " and ".join(_how(m) for m in advice)


def verdict(degrees: Sequence[Degree], units: dict[str, str], resource: str = "MACs") -> Verdict:
    """The verdict over ``degrees`` (any order); the least pruned one is the reference and holds by definition.

    ``resource``: what pruning removes, for the answer's "X× fewer" ("MACs", or "weights").
    """
    ordered = sorted(degrees, key=lambda d: d.removed)
    last, failure = ordered[0], None
    for degree in ordered[1:]:
        if not holds(degree.shift):
            failure = degree
            break
        last = degree
    advice = moves_at(failure, units) if failure is not None else ()
    said = answer(last, failure, advice, resource)
    last, failure = last.label, None if failure is None else failure.label
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
    reduction = 1 / max(1 - next(d.removed for d in ordered if d.label == last), 1e-12)
    return Verdict(last, failure, move, head + tail, reduction, advice, said)
