"""Linear mode connectivity between two models of one architecture.

Zhou, Yang, Chang & Mahoney, "A Three-regime Model of Network Pruning", ICML 2023 (after
Yang et al.'s loss-landscape taxonomy, NeurIPS 2021): evaluate the loss on the straight
line γ(t) = (1 − t)·θ_0 + t·θ_1 at evenly spaced t in [0, 1], BatchNorm statistics
recomputed on training data at every point (an average of two networks' weights is a new
network whose activations the endpoints' statistics do not describe), and summarise it as

    mc = ½ (L(θ_0) + L(θ_1)) − L(γ(t*)),  t* = argmax_t |½ (L(θ_0) + L(θ_1)) − L(γ(t))|.

mc < 0: the path rises above its endpoints (a barrier, poorly connected); mc ≥ 0: the path
stays at or below them. t* is searched over the interior points only: at the endpoints the
deviation is ±½ (L(θ_1) − L(θ_0)), which says how different the two endpoints are, not
how the path between them behaves, and its sign would depend on which model is called θ_0.

Pruned models are interpolated as the paper's code does: the masks are baked in (pruned
weights are zeros) and the plain weights are interpolated, so an interior point keeps the
union of the two masks, scaled. Two models with the same mask (one dense model, one mask,
fine-tuned with two seeds) stay in that mask's sparse subspace along the whole line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prunescope.checkpoint import plain_state_dict
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import make_permanent
from prunescope.train.batchnorm import recalibrate_batchnorm

MIN_POINTS = 11


@dataclass(frozen=True)
class LinearPath:
    """Val loss (nats) and error (fraction) at each ``t`` of the line, and its summary ``mc``."""

    t: list[float]
    loss: list[float]
    error: list[float]
    mc: float
    t_star: float

    def to_dict(self) -> dict:
        return asdict(self)


def mode_connectivity(losses: Sequence[float]) -> tuple[float, int]:
    """(mc, index of t*) of losses at evenly spaced points, endpoints first and last.

    ``losses`` has at least three values; t* is the interior point farthest from the
    endpoints' mean (see the module docstring).
    """
    if len(losses) < 3:
        raise UsageError(f"mode connectivity needs at least 3 points on the line, got {len(losses)}")
    mean = 0.5 * (losses[0] + losses[-1])
    interior = range(1, len(losses) - 1)
    star = max(interior, key=lambda i: abs(mean - losses[i]))
    return float(mean - losses[star]), star


def interpolate(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """The state (1 − t)·a + t·b; integer buffers (BatchNorm's batch count) are taken from ``a``."""
    if a.keys() != b.keys():
        missing = sorted(a.keys() ^ b.keys())
        raise UsageError(f"the two models have different parameters ({', '.join(missing[:3])}): "
                         "mode connectivity needs one architecture")
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), t) if a[k].is_floating_point() else a[k].clone() for k in a}


def linear_path(
    model_a: nn.Module,
    model_b: nn.Module,
    val: Split,
    train: Split,
    *,
    points: int = MIN_POINTS,
    bn_batches: int = 20,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LinearPath:
    """Loss and error on ``val`` along the line from ``model_a`` to ``model_b`` (neither is changed).

    At every point, endpoints included, BatchNorm statistics are recomputed on ``bn_batches``
    seeded batches of ``train`` (:func:`prunescope.train.recalibrate_batchnorm`), so the
    endpoints are measured the same way as the points between them.
    """
    if points < MIN_POINTS:
        raise UsageError(f"the line needs at least {MIN_POINTS} points, got {points}")
    # Masks baked in: pruned weights are zeros and every point is a plain model of the architecture.
    a, b = plain_state_dict(model_a), plain_state_dict(model_b)
    probe = make_permanent(copy.deepcopy(model_a)).to(device)
    ts = [i / (points - 1) for i in range(points)]
    evaluator = Evaluator(probe, val, device=device)
    losses, errors = [], []
    for t in ts:
        probe.load_state_dict(interpolate(a, b, t))
        recalibrate_batchnorm(probe, train, batches=bn_batches, batch_size=batch_size, seed=seed)
        metrics = evaluator.evaluate()
        losses.append(metrics.loss)
        errors.append(1.0 - metrics.accuracy)
    mc, star = mode_connectivity(losses)
    return LinearPath(t=ts, loss=losses, error=errors, mc=mc, t_star=ts[star])
