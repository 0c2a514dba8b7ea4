"""What scans, picks and comparisons optimise, and how their numbers are shown.

Every stage that decides compares a *score*, higher is better (:meth:`Metrics.score
<prunescope.evaluate.Metrics.score>`): accuracy and macro-F1 as they are (fractions), and for
a language model minus the log of perplexity (minus the mean token loss, in nats). A drop is
``dense score - score``: accuracy points lost, or ``ln(perplexity / dense perplexity)``. Drops
of log-perplexity add up over layers far better than drops of perplexity, and a tolerance on
perplexity is a relative increase (5% = perplexity × 1.05 = a log drop of ``ln 1.05``).

This module turns the user's tolerance into a score drop (:meth:`Score.allowed`) and a score
or a drop back into what the user reads (:meth:`Score.shown`, :meth:`Score.drop_text`): the
conversion lives here only, at the edges (command line, run settings, reports).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import LOWER_IS_BETTER, Metrics, token_level

# Allowed drop when none is given, in the metric's own unit: half an accuracy point; 5% more perplexity.
DEFAULT_TOLERANCE = {"perplexity": 0.05}
DEFAULT_ACCURACY_TOLERANCE = 0.005


@dataclass(frozen=True)
class Score:
    """How the metric ``metric`` is scored and shown."""

    metric: str

    @property
    def default_tolerance(self) -> float:
        """The tolerance used when none is given: 0.005 (half a point) of accuracy, 0.05 (5%) of perplexity."""
        return DEFAULT_TOLERANCE.get(self.metric, DEFAULT_ACCURACY_TOLERANCE)

    def allowed_or_default(self, tolerance: float | None) -> float:
        """:meth:`allowed` of ``tolerance``, or of :attr:`default_tolerance` when it is None."""
        return self.allowed(self.default_tolerance if tolerance is None else tolerance)

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def tolerance_unit(self) -> str:
        """What a tolerance given in hundredths means: accuracy points, or percent more perplexity."""
        return "% perplexity" if self.lower_is_better else "pts"

    def allowed(self, tolerance: float) -> float:
        """The score drop a tolerance allows: a fraction of accuracy as is; a relative increase of
        perplexity (0.05 = 5% higher) as ``ln(1 + tolerance)``."""
        if not math.isfinite(tolerance) or tolerance <= -1:
            raise UsageError(f"tolerance {tolerance} is not a usable number")
        return math.log1p(tolerance) if self.lower_is_better else tolerance

    def tolerance(self, drop: float) -> float:
        """The inverse of :meth:`allowed`: the tolerance a score drop amounts to."""
        return math.expm1(drop) if self.lower_is_better else drop

    def shown(self, score: float) -> float:
        """The metric as the user reads it: perplexity ``exp(-score)``, else the score itself."""
        if not self.lower_is_better:
            return score
        return math.exp(-score) if -score < 700 else math.inf

    @property
    def label(self) -> str:
        return "perplexity" if self.lower_is_better else self.metric

    def of(self, metrics: Metrics | Mapping[str, Any]) -> float:
        """The score of an evaluation, a :class:`Metrics` or its recorded ``to_dict()``."""
        if isinstance(metrics, Metrics):
            return metrics.score(self.metric)
        if self.lower_is_better:
            return -float(metrics["loss"])
        return float(metrics[self.metric] if self.metric in metrics else metrics["extra"][self.metric])

    def measured_text(self, metrics: Metrics | Mapping[str, Any]) -> str:
        """An evaluation as the user reads it: ``97.22%``, or a perplexity ``21.818``."""
        return self.value_text(self.of(metrics))

    def change_text(self, metrics: Metrics | Mapping[str, Any], reference: Metrics | Mapping[str, Any]) -> str:
        """How ``metrics`` differs from ``reference``: ``-0.28`` accuracy points, or ``+4.10%`` perplexity."""
        if self.lower_is_better:
            return f"{self.tolerance(self.of(reference) - self.of(metrics)) * 100:+.2f}%"
        return f"{(self.of(metrics) - self.of(reference)) * 100:+.2f}"

    @property
    def change_unit(self) -> str:
        return "Δ perplexity" if self.lower_is_better else "Δ pts"

    def value_text(self, score: float) -> str:
        return f"{self.shown(score):.3f}" if self.lower_is_better else f"{score:.2%}"

    def drop_text(self, drop: float, sign: bool = True) -> str:
        """A score drop in the user's unit: ``+0.52 pts`` lost, or ``+3.10% perplexity``."""
        number = self.tolerance(drop) * 100
        text = f"{number:+.2f}" if sign else f"{number:.4g}"
        return f"{text}% perplexity" if self.lower_is_better else f"{text} pts"

    def bound_text(self, drop: float) -> str:
        """What an allowed score drop means, said once in a command's output."""
        if self.lower_is_better:
            return (f"val perplexity at most {self.tolerance(drop):.2%} above dense (a log-perplexity drop of "
                    f"{drop:.4f} nats per token)")
        return f"val {self.metric} at most {drop * 100:g} pts below dense"


def default_metric(split: Split) -> str:
    """Perplexity for a language model's split (labels per token), accuracy otherwise."""
    return "perplexity" if token_level(split) else "accuracy"


