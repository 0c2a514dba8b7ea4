"""The scan's evaluation function on a real model: one target masked in place, the rest dense."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunescope.criteria import Scores
from prunescope.data.types import Split
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks
from prunescope.scan.study import DENSE
from prunescope.targets import Target


class ModelEvaluation:
    """``evaluate(target, sparsity, n) -> (value, low, high)`` for ``model`` on ``split``.

    The ``round(sparsity · numel)`` lowest-scored weights of ``target`` are zeroed in place
    with :func:`prunescope.masks.applied` and restored exactly afterwards; the metric is
    computed on the seeded subset of ``n`` examples (all of them when ``n >= len(split)``).
    ``low`` / ``high`` is the accuracy's Wilson interval for ``metric="accuracy"``; other
    metrics have no interval (``low == high == value``).

    Picklable, so that worker processes get their own copy of the model; the per-``n``
    evaluators (inputs cached on the device) are rebuilt there.
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
        self._evaluators: dict[int, Evaluator] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_evaluators": {}}

    def _evaluator(self, n: int) -> Evaluator:
        if n not in self._evaluators:
            self._evaluators[n] = Evaluator(self.model, self.split, device=self.device, subset=n, seed=self.seed)
        return self._evaluators[n]

    def __call__(self, target: str, sparsity: float, n: int) -> tuple[float, float, float]:
        allocation = {} if target == DENSE else {target: sparsity}
        with applied(self.model, self.targets, compute_masks(self.scores, allocation)):
            metrics = self._evaluator(n).evaluate()
        value = metrics.get(self.metric)
        low, high = metrics.accuracy_ci if self.metric == "accuracy" else (value, value)
        return value, low, high
