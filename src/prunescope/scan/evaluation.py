"""The scan's evaluation function on a real model: one target pruned in place, the rest dense."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from prunescope.criteria import Scores
from prunescope.data.types import Split
from prunescope.evaluate import Evaluator
from prunescope.masks import Masks, applied, compute_masks, removed_count
from prunescope.scan.study import DENSE, Measurement
from prunescope.targets import Target


class Pruning(Protocol):
    """Prunes a model in place with an allocation ``{target: sparsity}`` for a ``with`` block, then restores it.

    :class:`WeightPruning` removes weights of weight tensors;
    :class:`prunescope.structured.pruning.ChannelPruning` removes channels of coupled groups.
    """

    model: nn.Module

    def applied(self, allocation: Mapping[str, float]) -> contextlib.AbstractContextManager[nn.Module]: ...


class WeightPruning:
    """Unstructured pruning: per target the ``round(sparsity · numel)`` lowest-scored weights are zeroed.

    Masks are those of :func:`prunescope.masks.compute_masks`, computed faster for one
    target: each target's scores are sorted once, and where the ``k`` lowest scores are a
    unique set (no tie at the ``k``-th) the mask is ``score > k-th lowest``, which is
    exactly that set; on a tie ``compute_masks`` itself decides.
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], scores: Scores) -> None:
        self.model = model
        self.targets = list(targets)
        self.scores = scores
        self._sorted: dict[str, torch.Tensor | None] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sorted": {}}

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

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        pruned = {name: s for name, s in allocation.items() if s > 0}
        single = len(pruned) == 1  # the scan's case: one target, from its sorted scores
        masks = self.masks(*next(iter(pruned.items()))) if single else compute_masks(self.scores, pruned)
        with applied(self.model, self.targets, masks):
            yield self.model


class _KeepingEvaluator(Evaluator):
    """An :class:`~prunescope.evaluate.Evaluator` that keeps which examples its last evaluation got right."""

    correct: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        logits = super().logits()
        self.correct = logits.argmax(dim=1) == self.y
        return logits


class ModelEvaluation:
    """``evaluate(target, sparsity, n) -> Measurement`` for ``pruning.model`` on ``split``.

    ``target`` is pruned to ``sparsity`` in place by ``pruning`` and restored exactly
    afterwards; the metric is computed on the seeded subset of ``n`` examples (all of them
    when ``n >= len(split)``). ``low`` / ``high`` is the accuracy's Wilson interval for
    ``metric="accuracy"``; other metrics have no interval (``low == high == value``).

    On a subset (``n < len(split)``) with ``metric="accuracy"`` the measurement also counts,
    against the dense model on the same examples, the examples ``lost`` (dense right, pruned
    wrong) and ``gained`` (the reverse): the paired comparison the scan settles points with.
    The dense model's answers are kept from its own evaluation on that subset; a process
    that did not evaluate it (a worker, a resumed scan) runs one extra forward pass per subset
    size to get them.

    Picklable, so that worker processes get their own copy of the model; the per-``n``
    evaluators (inputs cached on the device) and the dense answers are rebuilt there.
    """

    def __init__(
        self,
        pruning: Pruning,
        split: Split,
        *,
        metric: str,
        device: torch.device,
        seed: int,
    ) -> None:
        self.pruning = pruning
        self.model = pruning.model
        self.split = split
        self.metric = metric
        self.device = device
        self.seed = seed
        self._evaluators: dict[int, _KeepingEvaluator] = {}
        self._dense_correct: dict[int, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_evaluators": {}, "_dense_correct": {}}

    def _evaluator(self, n: int) -> _KeepingEvaluator:
        if n not in self._evaluators:
            self._evaluators[n] = _KeepingEvaluator(
                self.model, self.split, device=self.device, subset=n, seed=self.seed
            )
        return self._evaluators[n]

    def __call__(self, target: str, sparsity: float, n: int) -> Measurement:
        evaluator = self._evaluator(n)
        paired = self.metric == "accuracy" and n < len(self.split)
        if target == DENSE:
            metrics = evaluator.evaluate()
        else:
            if paired and n not in self._dense_correct:
                evaluator.logits()  # the dense model's answers on these examples, for the paired counts
                self._dense_correct[n] = evaluator.correct
            with self.pruning.applied({target: sparsity}):
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
