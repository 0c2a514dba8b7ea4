"""The scan's evaluation function on a real model: one target masked in place, the rest dense."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunescope.criteria import Scores
from prunescope.data.types import Split
from prunescope.evaluate import Evaluator
from prunescope.masks import Masks, applied, compute_masks, removed_count
from prunescope.scan.study import DENSE, Measurement
from prunescope.targets import Target


class _KeepingEvaluator(Evaluator):
    """An :class:`~prunescope.evaluate.Evaluator` that keeps which examples its last evaluation got right."""

    correct: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        logits = super().logits()
        self.correct = logits.argmax(dim=1) == self.y
        return logits


class ModelEvaluation:
    """``evaluate(target, sparsity, n) -> Measurement`` for ``model`` on ``split``.

    The ``round(sparsity · numel)`` lowest-scored weights of ``target`` are zeroed in place
    with :func:`prunescope.masks.applied` and restored exactly afterwards; the metric is
    computed on the seeded subset of ``n`` examples (all of them when ``n >= len(split)``).
    ``low`` / ``high`` is the accuracy's Wilson interval for ``metric="accuracy"``; other
    metrics have no interval (``low == high == value``).

    On a subset (``n < len(split)``) with ``metric="accuracy"`` the measurement also counts,
    against the dense model on the same examples, the examples ``lost`` (dense right, pruned
    wrong) and ``gained`` (the reverse): the paired comparison the scan settles points with.
    The dense model's answers are kept from its own evaluation on that subset; a process
    that did not evaluate it (a worker, a resumed scan) runs one extra forward pass per subset
    size to get them.

    Masks are those of :func:`prunescope.masks.compute_masks`, computed faster: each
    target's scores are sorted once, and where the ``k`` lowest scores are a unique set (no
    tie at the ``k``-th) the mask is ``score > k-th lowest``, which is exactly that set;
    on a tie ``compute_masks`` itself decides.

    Picklable, so that worker processes get their own copy of the model; the per-``n``
    evaluators (inputs cached on the device), the sorted scores and the dense answers are
    rebuilt there.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        targets: Sequence[Target],
        scores: Scores,
        *,
        metric: str,
        device: torch.device,
        seed: int,
    ) -> None:
        self.model = model
        self.split = split
        self.targets = list(targets)
        self.scores = scores
        self.metric = metric
        self.device = device
        self.seed = seed
        self._evaluators: dict[int, _KeepingEvaluator] = {}
        self._dense_correct: dict[int, torch.Tensor] = {}
        self._sorted: dict[str, torch.Tensor | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_evaluators": {}, "_dense_correct": {}, "_sorted": {}}

    def _evaluator(self, n: int) -> _KeepingEvaluator:
        if n not in self._evaluators:
            self._evaluators[n] = _KeepingEvaluator(
                self.model, self.split, device=self.device, subset=n, seed=self.seed
            )
        return self._evaluators[n]

    def masks(self, target: str, sparsity: float) -> Masks:
        """``compute_masks(scores, {target: sparsity})``, from the target's sorted scores where that is exact."""
        score = self.scores[target]
        if target not in self._sorted:
            ordered = torch.sort(score.flatten()).values
            self._sorted[target] = None if bool(torch.isnan(ordered).any()) else ordered
        ordered = self._sorted[target]
        k = removed_count(sparsity, score.numel())
        if ordered is None or not 0 < k <= score.numel() or (k < score.numel() and ordered[k] == ordered[k - 1]):
            return compute_masks(self.scores, {target: sparsity})
        return {target: score > ordered[k - 1]}

    def __call__(self, target: str, sparsity: float, n: int) -> Measurement:
        evaluator = self._evaluator(n)
        paired = self.metric == "accuracy" and n < len(self.split)
        if target == DENSE:
            metrics = evaluator.evaluate()
        else:
            if paired and n not in self._dense_correct:
                evaluator.logits()  # the dense model's answers on these examples, for the paired counts
                self._dense_correct[n] = evaluator.correct
            with applied(self.model, self.targets, self.masks(target, sparsity)):
                metrics = evaluator.evaluate()
        value = metrics.get(self.metric)
        low, high = metrics.accuracy_ci if self.metric == "accuracy" else (value, value)
        if not paired:
            return Measurement(value, low, high)
        if target == DENSE:
            self._dense_correct[n] = evaluator.correct
            return Measurement(value, low, high, lost=0, gained=0)
        dense, pruned = self._dense_correct[n], evaluator.correct
        lost, gained = int((dense & ~pruned).sum()), int((~dense & pruned).sum())
        return Measurement(value, low, high, lost=lost, gained=gained)
