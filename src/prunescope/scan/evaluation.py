"""The scan's evaluation function on a real model: one target pruned in place, the rest dense."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import numpy as np
import torch

from prunescope.curves import ExampleResults
from prunescope.data.types import Split
from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError
from prunescope.evaluate import Evaluator, Metrics, pack_bits, subset_indices, unpack_bits
from prunescope.measure import fastest_batch_size
from prunescope.scan.runner import ScanOutcome
from prunescope.scan.study import DENSE, Measurement, Point
from prunescope.units import Pruning


class ModelEvaluation:
    """``evaluate(target, sparsity, n) -> Measurement`` for ``pruning.model`` on ``split``.

    ``target`` is pruned to ``sparsity`` in place by ``pruning`` and restored exactly
    afterwards; the metric is computed on the seeded subset of ``n`` examples (all of them
    when ``n >= len(split)``). ``low`` / ``high`` is the accuracy's Wilson interval for
    ``metric="accuracy"``; other metrics have no interval (``low == high == value``).

    With ``metric="accuracy"`` the measurement also keeps which examples were right
    (``correct``, packed; the examples are ``subset_indices(len(split), n, seed)``) and counts,
    against the dense model on the same examples, the examples ``lost`` (dense right, pruned
    wrong) and ``gained`` (the reverse): the paired comparison the scan settles points with.
    The dense model's answers are kept from its own evaluation on those examples, or read
    from a finished trial (:meth:`remember`, a resumed scan); a process that has neither (a
    worker started before the dense trial finished) runs one extra forward pass per subset size.

    Picklable, so that worker processes get their own copy of the model; the per-``n``
    evaluators (inputs cached on the device) and the dense answers are rebuilt there, and
    ``device`` (``auto`` too) is resolved again where the copy runs: a Ray worker with a GPU
    uses it even when the driver has none.
    """

    def __init__(
        self,
        pruning: Pruning,
        split: Split,
        *,
        metric: str,
        device: str | torch.device,
        seed: int,
    ) -> None:
        self.pruning = pruning
        self.model = pruning.model
        self.split = split
        self.metric = metric
        self.requested_device = device
        self.device = resolve_device(device)
        self.seed = seed
        self._evaluators: dict[int, Evaluator] = {}
        self._dense_correct: dict[int, np.ndarray] = {}  # per n, which examples the dense model got right
        self._batch_size: int | None = None  # the fastest on this process's device, measured at first use

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_evaluators": {}, "_batch_size": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__ = state
        self.device = resolve_device(self.requested_device)

    def remember(self, finished: Mapping[Point, Measurement]) -> None:
        """Keep the dense model's answers stored in finished trials, so that none is computed again."""
        for point, measured in finished.items():
            if point.target == DENSE and measured.correct is not None:
                n = len(subset_indices(len(self.split), point.n, self.seed))
                self._dense_correct[point.n] = unpack_bits(measured.correct, n)

    def _evaluator(self, n: int) -> Evaluator:
        if self._batch_size is None:
            self._batch_size = fastest_batch_size(
                self.model, tuple(self.split.x.shape[1:]), device=self.device, most=len(self.split)
            )
        if n not in self._evaluators:
            self._evaluators[n] = Evaluator(
                self.model, self.split, device=self.device, subset=n, seed=self.seed, batch_size=self._batch_size
            )
        return self._evaluators[n]

    def __call__(self, target: str, sparsity: float, n: int) -> Measurement:
        evaluator = self._evaluator(n)
        paired = self.metric == "accuracy"
        if paired and target != DENSE and n not in self._dense_correct:
            evaluator.accuracy()  # the dense model's answers on these examples, for the paired counts
            self._dense_correct[n] = evaluator.correct.cpu().numpy()
        with contextlib.nullcontext() if target == DENSE else self.pruning.applied({target: sparsity}):
            if not paired:
                return self._unpaired(evaluator.evaluate(), target, sparsity)
            value, (low, high) = evaluator.accuracy()  # accuracy alone: the loss and macro-F1 are not read
        # On the host, where the answers are packed anyway: numpy counts a few hundred faster than torch dispatches.
        pruned = evaluator.correct.cpu().numpy()
        if target == DENSE:
            self._dense_correct[n] = pruned
        dense = self._dense_correct[n]
        lost, gained = int(np.count_nonzero(dense > pruned)), int(np.count_nonzero(pruned > dense))
        return Measurement(value, low, high, lost=lost, gained=gained, correct=pack_bits(pruned))

    def _unpaired(self, metrics: Metrics, target: str, sparsity: float) -> Measurement:
        """The measurement of a metric other than accuracy (no interval); refused where it is not finite."""
        value = metrics.score(self.metric)
        if not math.isfinite(value):
            what = "the dense model" if target == DENSE else f"pruning {target} to {sparsity:.1%}"
            raise PrunescopeError(f"{what} made the val {self.metric} {metrics.get(self.metric)} (loss "
                                  f"{metrics.loss}): exclude that layer (--exclude) or scan lower levels")
        return Measurement(value, value, value)


def example_results(outcome: ScanOutcome, size: int, seed: int) -> ExampleResults:
    """The per-example results of a scan's curves, read from its measurements (no evaluation).

    size: examples in the val split; seed: the scan's seed, which drew its subsets.
    Curve points whose measurement kept none (a trial recorded by an older prunescope) are
    counted in ``missing``.
    """
    index, dense, points, missing = {}, {}, {}, 0
    for point, measured in outcome.measured.items():
        if point.target == DENSE and measured.correct is not None:
            index[point.n] = subset_indices(size, point.n, seed)
            dense[point.n] = unpack_bits(measured.correct, len(index[point.n]))
    for name, curve in outcome.points.items():
        for p in curve:
            measured = outcome.measured[Point(name, p.sparsity, p.n)]
            if measured.correct is None or p.n not in dense:
                missing += 1
            else:
                points[(name, p.sparsity, p.n)] = unpack_bits(measured.correct, len(index[p.n]))
    return ExampleResults(size, index, dense, points, missing)
