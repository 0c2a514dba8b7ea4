"""The regime rule: which regime a cell is in, and which way to move the temperature.

Zhou et al., ICML 2023: regime I (mc < −ε, a loss barrier between the two pruned models:
poorly connected), II-A (connected, CKA < δ: the models reach different solutions of one
basin), II-B (connected and similar). Raising the temperature (more epochs, smaller batches,
a larger learning rate or SAM radius) helps in regime I and hurts in II-A; II-B is where
the rule stops.

ε is in nats of val loss and δ a CKA of the outputs; the defaults below are this tool's
(the paper reads its boundaries off its phase diagrams), so both are options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from prunescope.errors import UsageError

REGIMES = ("I", "II-A", "II-B")
DEFAULT_EPSILON = 0.05  # nats: a barrier smaller than this is within seed-to-seed noise on small val sets
DEFAULT_DELTA = 0.9  # CKA of the outputs below which two connected models count as dissimilar
ADVICE = {"I": "raise", "II-A": "lower", "II-B": "keep"}


def check_thresholds(epsilon: float, delta: float) -> None:
    """ε ≥ 0 (nats) and δ in [0, 1] (a CKA), else a one-line UsageError."""
    if not epsilon >= 0:
        raise UsageError(f"--epsilon is a loss barrier in nats and must be at least 0, got {epsilon}")
    if not 0 <= delta <= 1:
        raise UsageError(f"--delta is a CKA threshold in [0, 1], got {delta}")


def classify(mc: float, cka: float, epsilon: float = DEFAULT_EPSILON, delta: float = DEFAULT_DELTA) -> str:
    """Regime of one cell from its mode connectivity ``mc`` (nats) and output CKA."""
    if mc < -epsilon:
        return "I"
    return "II-A" if cka < delta else "II-B"


@dataclass(frozen=True)
class Walk:
    """The rule followed along the temperature grid at one density, from ``start``.

    ``path``: the indices visited; ``chosen``: where it stopped (a II-B cell, the edge of the
    grid, or the point where the advice turned back on itself).
    """

    start: int
    path: list[int]
    chosen: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def walk(regimes: Sequence[str], start: int) -> Walk:
    """Follow the advice from ``regimes[start]`` over temperatures sorted ascending."""
    if not 0 <= start < len(regimes):
        raise UsageError(f"start index {start} is outside the {len(regimes)} temperatures")
    path, i = [start], start
    while True:
        step = {"raise": 1, "lower": -1, "keep": 0}[ADVICE[regimes[i]]]
        if step == 0:
            return Walk(start, path, i, "regime II-B")
        nxt = i + step
        if not 0 <= nxt < len(regimes):
            return Walk(start, path, i, "edge of the grid")
        if nxt in path:  # I next to II-A: stop at the connected cell where the advice turned back
            return Walk(start, path, i, "advice turns back")
        path.append(nxt)
        i = nxt


@dataclass(frozen=True)
class DirectionCheck:
    """At ``temperature`` (regime ``regime``) the rule says ``advice``; did the neighbour in that
    direction have a lower mean error, beyond the seed spread?"""

    temperature: float
    regime: str
    advice: str
    neighbour: float
    error_here: float
    error_there: float
    spread: float
    outcome: str  # "right" (lower beyond spread), "wrong" (higher beyond spread), "tie" (within spread)

    def to_dict(self) -> dict:
        return asdict(self)


def check_directions(temperatures: Sequence[float], regimes: Sequence[str], errors: Sequence[float],
                     spreads: Sequence[float]) -> list[DirectionCheck]:
    """Every cell whose advice points to a neighbour on the grid, checked against the measured errors.

    ``spreads``: the seed-to-seed standard deviation of each cell's error; a difference
    within the larger of the two cells' spreads is a tie.
    """
    checks = []
    for i, regime in enumerate(regimes):
        advice = ADVICE[regime]
        j = i + {"raise": 1, "lower": -1, "keep": 0}[advice]
        if advice == "keep" or not 0 <= j < len(regimes):
            continue
        difference = errors[j] - errors[i]
        spread = max(spreads[i], spreads[j])
        outcome = "tie" if abs(difference) <= spread else ("right" if difference < 0 else "wrong")
        checks.append(DirectionCheck(float(temperatures[i]), regime, advice, float(temperatures[j]), errors[i],
                                     errors[j], spread, outcome))
    return checks
