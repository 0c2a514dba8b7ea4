"""What the page calls the quality of a model, read from a result document: accuracy with its 95% interval, or
for a language model perplexity (lower is better; :mod:`prunescope.scores`).

Every section that shows a metric, a change of it, a bound on it or a plot of it asks a :class:`Quality` made
from the document, so that a language model's report speaks of perplexity throughout. Values are read
defensively: a missing one is None (a dash on the page), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunescope.report.blocks import Cell, accuracy_cell
from prunescope.report.formats import acc_of, ci_of, num, pct, pts_text
from prunescope.scores import Score


@dataclass(frozen=True)
class Quality:
    """How the page reads and writes the metric ``score.metric``."""

    score: Score

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Quality:
        """The quality of a result document: its ``metric`` (accuracy when it names none)."""
        metric = doc.get("metric")
        return cls(Score(metric if isinstance(metric, str) else "accuracy"))

    @property
    def perplexity(self) -> bool:
        return self.score.lower_is_better

    @property
    def name(self) -> str:
        """``accuracy`` or ``perplexity``."""
        return self.score.label

    @property
    def short(self) -> str:
        """A column header's word: ``acc.`` or ``ppl``."""
        return "ppl" if self.perplexity else "acc."

    @property
    def change_unit(self) -> str:
        """How a change reads: ``pts`` of accuracy or ``%`` of perplexity."""
        return "%" if self.perplexity else "pts"

    def value(self, metrics: Any) -> float | None:
        """The metric of an evaluation dict as shown: accuracy (a fraction) or perplexity."""
        if not isinstance(metrics, Mapping):
            return None
        if not self.perplexity:
            return acc_of(metrics)
        loss = num(metrics.get("loss"))
        return None if loss is None else self.score.shown(-loss)

    def interval(self, metrics: Any) -> tuple[float, float, float] | None:
        """``(value, low, high)``: accuracy and its 95% interval; a perplexity, which has none recorded, as a point."""
        value = self.value(metrics)
        if value is None or self.perplexity:
            return None if value is None else (value, value, value)
        low, high = ci_of(metrics) or (value, value)
        return value, low, high

    def cell(self, metrics: Any) -> Cell:
        """Accuracy with its interval underneath, or a perplexity."""
        if not self.perplexity:
            return accuracy_cell(metrics)
        return Cell(self.text(self.value(metrics)))

    def text(self, value: float | None) -> str:
        """A shown value: ``97.22%`` or ``21.818``."""
        if value is None:
            return "–"
        return f"{value:.3f}" if self.perplexity else pct(value)

    def of_score(self, score: float | None) -> float | None:
        """A score (:mod:`prunescope.scores`: accuracy, or minus log-perplexity) as shown."""
        return None if score is None else self.score.shown(score)

    def change(self, value: float | None, reference: float | None) -> str:
        """``value`` against ``reference`` (both as shown): ``+0.52`` points, or ``+4.10`` percent of perplexity."""
        if value is None or reference is None:
            return "–"
        if self.perplexity:
            return f"{(value / reference - 1) * 100:+.2f}"
        return pts_text(value - reference)

    def drop(self, drop: float | None) -> str:
        """An allowed or measured score drop in the user's unit: ``0.5 pts`` or ``5% perplexity``."""
        return "the allowed drop" if drop is None else self.score.drop_text(drop, sign=False)
