"""Joint refinement: improve an allocation by measured evaluations at constant global sparsity.

Sensitivity curves measure one target at a time, others dense; a picker that adds their
drops ignores how targets interact when pruned together, and says nothing beyond the
scanned levels. A refiner starts from an allocation (a picker's, a baseline's) and moves
removed weights between targets, keeping the total removed count fixed, accepting only
moves whose *measured* joint metric is better. It never returns an allocation that
measured worse than its start, and it never evaluates more than its budget. Given a
``noise`` (the paired interval of the gain between two allocations measured on the same
examples), a move counts as better only when that interval lies above zero, so that a
small val split is not overfitted by moves that won by chance.

A refiner is a small object with one method, ``refine(allocation, numels, evaluate) ->
Refined``, like the pickers, so that it can be swapped or turned off.

- :class:`PairwiseRefiner`: greedy local search over pairs of targets, each pair's step
  lengthened while its move helps and halved when it does not (a pattern search on the
  removed counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

from prunescope.errors import UsageError
from prunescope.masks import removed_count

Evaluate = Callable[[dict[str, float]], float]
"""Objective (higher is better) of the model pruned jointly with an allocation."""

Noise = Callable[[dict[str, float], dict[str, float]], tuple[float, float]]
"""``noise(a, b)``: 95% interval of objective(b) − objective(a), both measured on the same examples (paired)."""


@dataclass
class RefineStep:
    """One evaluation: the allocation tried, its objective, the move that produced it.

    ``move`` is ``(giver, taker, weights)``: ``giver`` removes that many weights fewer and
    ``taker`` that many more; None for the starting allocation. ``gain_interval``: the paired
    interval of the gain over the best allocation so far (None without a ``noise``, or when
    the move did not measure better).
    """

    allocation: dict[str, float]
    value: float
    move: tuple[str, str, int] | None
    accepted: bool
    gain_interval: tuple[float, float] | None = None


@dataclass
class Refined:
    """A refiner's answer: the best allocation measured, its objective, and every evaluation."""

    allocation: dict[str, float]
    value: float
    start: dict[str, float]
    start_value: float
    evaluations: int  # objective evaluations spent, the start's included when it was measured here
    steps: list[RefineStep] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.value - self.start_value

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Refiner(Protocol):
    name: str

    def refine(
        self,
        allocation: Mapping[str, float],
        numels: Mapping[str, int],
        evaluate: Evaluate,
        *,
        start_value: float | None = None,
        noise: Noise | None = None,
    ) -> Refined: ...


@dataclass
class PairwiseRefiner:
    """Greedy pairwise moves of removed weights between targets, global count constant.

    State: the removed count r_t and kept count k_t = n_t - r_t of every target. A move
    from ``giver`` g to ``taker`` t at step σ transfers Δ = round(σ · min(k_g, k_t)) removed
    weights: g removes Δ fewer, t Δ more, so the global removed count stays exactly what it
    was and neither target's kept count changes by more than a fraction σ (the sizes of
    targets differ by orders of magnitude; their density is what matters). Δ is capped so
    that g never goes below 0 removed and t keeps at least ``min_kept`` weights.

    Search (a pattern search with one step per ordered pair): every ordered pair (g, t) has
    its own σ, starting at ``step``. Rounds go over the pairs whose σ is at least
    ``min_step``; a pair's move is evaluated, and while it is accepted it is repeated with
    σ · ``grow`` (capped at ``step``), a line search along that direction; the first
    rejection halves that pair's σ and the round moves on to the next pair. A move is
    accepted when its objective beats the best so far by more than ``min_gain`` and, with a
    ``noise``, when the paired interval of that gain lies above ``min_gain`` too; a move that
    measured better but inside the noise stops that pair for good (shorter moves gain less),
    one that measured worse halves its σ. The accepted values only increase. Stops after
    ``max_evaluations`` evaluations (the start counts as one when it is measured here, not
    when ``start_value`` is given), or when a round evaluates nothing (every σ below
    ``min_step``, or nothing left to move).

    max_evaluations: evaluation budget (each an actual joint evaluation of the model).
    step: initial (and largest) σ, the largest relative change of a target's kept weights per move.
    min_step: smallest σ tried.
    min_gain: least objective improvement that counts as better (0: any strict improvement).
    min_kept: fewest weights a target keeps (a fully removed layer disconnects the network).
    grow: factor on a pair's σ after an accepted move.
    """

    max_evaluations: int = 40
    step: float = 0.5
    min_step: float = 0.05
    min_gain: float = 0.0
    min_kept: int = 1
    grow: float = 1.5
    name: str = "pairwise"

    def __post_init__(self) -> None:
        if self.max_evaluations < 0:
            raise UsageError(f"refinement budget must be at least 0 evaluations, got {self.max_evaluations}")
        if not self.grow >= 1:
            raise UsageError(f"grow must be at least 1, got {self.grow:g}")
        if not 0 < self.min_step <= self.step <= 1:
            raise UsageError(
                f"refinement steps must satisfy 0 < min_step <= step <= 1, got {self.min_step:g}, {self.step:g}"
            )
        if self.min_gain < 0:
            raise UsageError(f"min_gain must be at least 0, got {self.min_gain:g}")
        if self.min_kept < 1:
            raise UsageError(f"min_kept must be at least 1 weight, got {self.min_kept}")

    def refine(
        self,
        allocation: Mapping[str, float],
        numels: Mapping[str, int],
        evaluate: Evaluate,
        *,
        start_value: float | None = None,
        noise: Noise | None = None,
    ) -> Refined:
        """Refine ``allocation`` (``{target: sparsity}``, targets of ``numels``) by measured moves.

        ``evaluate`` is called with a full allocation ``{target: removed / numel}``;
        ``start_value``, when given, is the start's objective measured already (not
        re-evaluated, not counted). ``noise``: see :data:`Noise` (None: every measured gain
        counts). Returns the best allocation measured (the start when no move beat it; with a
        zero budget and no ``start_value``, the start with NaN values).
        """
        missing = [name for name in allocation if name not in numels]
        if missing:
            raise UsageError(f"no weight count for target {missing[0]!r}")
        names = list(allocation)
        removed = {name: removed_count(allocation[name], numels[name]) for name in names}
        start = self._allocation(removed, numels)
        steps: list[RefineStep] = []
        evaluations = 0
        if start_value is None:
            if self.max_evaluations == 0:
                details = self._details({}) | {"noise": "paired 95% interval" if noise else None}
                return Refined(start, float("nan"), start, float("nan"), 0, steps, details)
            start_value = float(evaluate(dict(start)))
            evaluations = 1
            steps.append(RefineStep(dict(start), start_value, None, True))
        best = start_value
        pairs = [(g, t) for g in names for t in names if g != t]
        steps_of = dict.fromkeys(pairs, self.step)  # each pair's own step σ
        while evaluations < self.max_evaluations:
            active = [p for p in pairs if steps_of[p] >= self.min_step - 1e-12]
            before = evaluations
            for giver, taker in active:
                # Line search along one pair: repeat (and lengthen) a move while it keeps improving.
                while evaluations < self.max_evaluations:
                    delta = self._delta(giver, taker, removed, numels, steps_of[giver, taker])
                    if delta < 1:
                        break  # nothing to move this way now (the giver is dense, or the taker at min_kept)
                    trial = dict(removed)
                    trial[giver] -= delta
                    trial[taker] += delta
                    tried = self._allocation(trial, numels)
                    value = float(evaluate(dict(tried)))
                    evaluations += 1
                    better = value > best + self.min_gain
                    interval = noise(self._allocation(removed, numels), tried) if better and noise else None
                    accepted = better and (interval is None or interval[0] > self.min_gain)
                    steps.append(RefineStep(tried, value, (giver, taker, delta), accepted, interval))
                    if not accepted:
                        # Better within the noise: a shorter move would gain less, so this pair is done.
                        steps_of[giver, taker] = 0.0 if better else steps_of[giver, taker] / 2
                        break
                    removed, best = trial, value
                    steps_of[giver, taker] = min(steps_of[giver, taker] * self.grow, self.step)
                if evaluations >= self.max_evaluations:
                    break
            if evaluations == before:
                break  # every pair is below min_step or has nothing to move
        final = self._allocation(removed, numels)
        details = self._details(steps_of) | {"noise": "paired 95% interval" if noise else None}
        return Refined(final, best, start, start_value, evaluations, steps, details)

    def _delta(self, giver: str, taker: str, removed: dict[str, int], numels: Mapping[str, int], step: float) -> int:
        kept_giver = numels[giver] - removed[giver]
        kept_taker = numels[taker] - removed[taker]
        delta = round(step * min(kept_giver, kept_taker))
        return min(delta, removed[giver], kept_taker - self.min_kept)

    def _details(self, steps_of: Mapping[tuple[str, str], float]) -> dict:
        return {
            "refiner": self.name,
            "max_evaluations": self.max_evaluations,
            "step": self.step,
            "min_step": self.min_step,
            "min_gain": self.min_gain,
            "grow": self.grow,
            "last_steps": {f"{g}->{t}": step for (g, t), step in steps_of.items()},
        }

    @staticmethod
    def _allocation(removed: Mapping[str, int], numels: Mapping[str, int]) -> dict[str, float]:
        return {name: count / numels[name] for name, count in removed.items()}
