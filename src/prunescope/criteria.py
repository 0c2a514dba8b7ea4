"""Per-weight importance scores: which weights go first.

Every criterion maps each target to a tensor of the weight's shape; **lower scores are
pruned first**. Scores read the weight the forward pass uses (``weight_orig * weight_mask``
for a model pruned with ``torch.nn.utils.prune``), so already-pruned weights score zero.
Scores are computed once per model and reused for every allocation.

- ``magnitude``: |w|.
- ``random``: seeded uniform noise (a control, not a method).
- ``taylor``: (g·w)² accumulated over batches, g the mini-batch loss gradient
  (Molchanov et al., "Pruning CNNs for resource efficient inference", 2017 / 2019).
- ``fisher``: OBD's ½·H_qq·w_q² with the diagonal Hessian replaced by the empirical Fisher,
  the mean of g² over batches (LeCun et al., "Optimal Brain Damage", 1990).
- ``lamp``: w[u]² / Σ_{v ≥ u} w[v]², weights of one layer sorted ascending by w²
  (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021).
  Scores are comparable across layers, so a global threshold gives LAMP's allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.targets import Target, effective_weight, parameter

Scores = dict[str, torch.Tensor]


def magnitude(model: nn.Module, targets: Sequence[Target], **_: object) -> Scores:
    return {t.name: effective_weight(model, t).abs() for t in targets}


def random(model: nn.Module, targets: Sequence[Target], *, seed: int = 0, **_: object) -> Scores:
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for t in targets:
        weight = parameter(model, t)
        scores[t.name] = torch.rand(weight.shape, generator=generator).to(weight.device)
    return scores


def lamp(model: nn.Module, targets: Sequence[Target], **_: object) -> Scores:
    scores = {}
    for t in targets:
        squared = effective_weight(model, t).flatten().double() ** 2
        ordered, order = torch.sort(squared)
        # Sum of squares of each weight and of every larger one: a reversed cumulative sum.
        tail = ordered.flip(0).cumsum(0).flip(0)
        score = torch.empty_like(squared)
        score[order] = ordered / tail.clamp_min(torch.finfo(torch.float64).tiny)
        scores[t.name] = score.view(t.shape).float()
    return scores


def _batch_gradients(
    model: nn.Module, targets: Sequence[Target], data: Split, *, batches: int, batch_size: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the loss gradient of every target for ``batches`` seeded mini-batches of ``data``.

    The model is kept in eval mode so that BatchNorm running statistics are not touched.
    """
    device = next(model.parameters()).device
    weights = {t.name: parameter(model, t) for t in targets}
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, min(len(data), batches * batch_size), batch_size):
            index = order[start : start + batch_size]
            x, y = data.x[index].to(device), data.y[index].to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y)
                grads = torch.autograd.grad(loss, list(weights.values()))
            yield {name: g.detach() for name, g in zip(weights, grads, strict=True)}
    finally:
        model.train(was_training)


def _gradient_criterion(
    per_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float = 1.0
) -> Callable[..., Scores]:
    """A criterion that averages ``per_batch(g, w)`` over mini-batches, times ``scale``."""

    def criterion(
        model: nn.Module,
        targets: Sequence[Target],
        *,
        data: Split | None = None,
        batches: int = 16,
        batch_size: int = 128,
        seed: int = 0,
        **_: object,
    ) -> Scores:
        if data is None:
            raise UsageError("this criterion needs training data for gradients")
        weights = {t.name: effective_weight(model, t) for t in targets}
        totals = {name: torch.zeros_like(w) for name, w in weights.items()}
        count = 0
        for grads in _batch_gradients(model, targets, data, batches=batches, batch_size=batch_size, seed=seed):
            for name, g in grads.items():
                totals[name] += per_batch(g, weights[name])
            count += 1
        return {name: scale * total / max(count, 1) for name, total in totals.items()}

    return criterion


taylor = _gradient_criterion(lambda g, w: (g * w) ** 2)
fisher = _gradient_criterion(lambda g, w: g**2 * w**2, scale=0.5)

CRITERIA: dict[str, Callable[..., Scores]] = {
    "magnitude": magnitude,
    "random": random,
    "taylor": taylor,
    "fisher": fisher,
    "lamp": lamp,
}
NEEDS_DATA = frozenset({"taylor", "fisher"})


def compute_scores(
    model: nn.Module,
    targets: Sequence[Target],
    criterion: str = "magnitude",
    *,
    data: Split | None = None,
    batches: int = 16,
    batch_size: int = 128,
    seed: int = 0,
) -> Scores:
    """Importance of every weight of every target under ``criterion`` (lower = pruned first).

    ``data`` (the train split) is needed by the gradient criteria ``taylor`` and ``fisher``,
    which average over ``batches`` seeded mini-batches of ``batch_size`` samples.
    """
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    return CRITERIA[criterion](model, targets, data=data, batches=batches, batch_size=batch_size, seed=seed)
