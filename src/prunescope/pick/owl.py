"""OWL: outlier-weighed layer-wise sparsity (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing
Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024; reference code github luuyin/OWL,
``lib/prune_all.py``, ``prune_wanda_outlier``).

At global sparsity s, per block b (the reference's unit is a decoder layer, all its Linear
sublayers together; here :func:`prunescope.pick.spread.blocks`: a module path up to its first
ModuleList / Sequential index, so a transformer's layer, a ResNet's residual block, or a
plain network's single layer):

1. D_b, the outlier ratio: the share of the Wanda scores |W_ij| · ‖X_j‖₂ of the block's
   weights (all its targets together) above M × their mean (the reference's
   ``check_outlier_mean``, there in percent: the scale cancels in step 2);
2. r_b = (D_b − min D) / (max D − min D) · 2λ, a density offset in [0, 2λ] (all D equal:
   r_b = 0, uniform);
3. the reference's density (1 − s) + r_b − mean(r), i.e. sparsity s_b = s − (r_b − mean r):
   more outliers, lower sparsity, the sparsities spanning 2λ around s (exactly [s − λ, s + λ]
   when r is symmetric about its mean).

The reference's mean is over blocks of one size (a LLaMA's layers); here it is weighted by
the blocks' weights, so that the removed total is exactly round(s · N) for blocks of any
size (the same when they are equal), every block is clipped to [0, (n − 1)/n] with the
shift re-solved, and counts are rounded exactly (:func:`prunescope.pick.spread.solve`).

Defaults M = 5, λ = 0.08: the paper's published commands (the README's OWL-Wanda,
OWL-SparseGPT and OWL-magnitude scripts for unstructured sparsity; ``main.py``'s argparse
default for M is 3). :data:`M_GRID` × :data:`LAMBDA_GRID` is the grid of the paper's
hyper-parameter study, from which ``owl-tuned`` selects on val.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.calibration import check_supported
from prunescope.criteria import wanda_saliency
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity
from prunescope.pick.allocator import Pick, Problem
from prunescope.pick.spread import blocks, solve
from prunescope.targets import Target

M_DEFAULT = 5.0
LAMBDA_DEFAULT = 0.08
M_GRID = (3.0, 5.0, 7.0, 10.0)
LAMBDA_GRID = (0.02, 0.05, 0.08, 0.1, 0.15, 0.2)


def outlier_ratios(
    model: nn.Module, grouped: Mapping[str, Sequence[Target]], inputs: torch.Tensor, ms: Sequence[float]
) -> dict[float, dict[str, float]]:
    """``{M: {block: D_b}}``: the fraction of each block's Wanda scores above M × the block's mean score.

    inputs: calibration inputs (N, *input_shape) from the train split. One pass of
    :func:`prunescope.criteria.wanda_saliency` per target serves every M.
    """
    targets = [t for members in grouped.values() for t in members]
    check_supported(model, targets, inputs[:1], "use an allocation that reads no calibration data")
    ratios: dict[float, dict[str, float]] = {m: {} for m in ms}
    for block, members in grouped.items():
        scores = torch.cat([wanda_saliency(model, t, inputs).flatten().double() for t in members])
        mean = scores.mean()
        for m in ms:
            ratios[m][block] = float((scores > m * mean).double().mean())
    return ratios


def owl_allocation(
    grouped: Mapping[str, Sequence[Target]], ratios: Mapping[str, float], sparsity: float, lam: float
) -> tuple[dict[str, float], dict[str, float], float]:
    """OWL's per-target sparsities from the blocks' outlier ratios ``ratios`` (D_b) at global ``sparsity``.

    Returns the allocation, the density offsets r_b in [0, 2λ], and the shift c (the weighted
    mean of r when no block is clipped): s_b = s + c − r_b.
    """
    low, high = min(ratios.values()), max(ratios.values())
    spread = {b: (d - low) / (high - low) * 2 * lam if high > low else 0.0 for b, d in ratios.items()}
    allocation, shift = solve(grouped, {b: sparsity - r for b, r in spread.items()}, dict.fromkeys(grouped, 1.0),
                              sparsity)
    return allocation, spread, shift


def cached_ratios(problem: Problem, grouped: Mapping[str, Sequence[Target]], ms: Sequence[float],
                  per_block: bool) -> dict[float, dict[str, float]]:
    """:func:`outlier_ratios` of the problem's model, computed once per M and kept in ``problem.cache``."""
    key = ("owl", per_block, problem.calibration, tuple(t.name for t in problem.targets))
    known = problem.cache.setdefault(key, {})
    missing = [m for m in ms if m not in known]
    if missing:
        if problem.model is None:
            raise UsageError("OWL needs the model to score its weights")
        known.update(outlier_ratios(problem.model, grouped, problem.needs_calibration("OWL"), missing))
    return {m: known[m] for m in ms}


@dataclass(frozen=True)
class OWL:
    """OWL at ``target_sparsity`` with threshold ``outlier_m`` (M) and range ``owl_lambda`` (λ); see the module."""

    target_sparsity: float
    outlier_m: float = M_DEFAULT
    owl_lambda: float = LAMBDA_DEFAULT
    per_block: bool = True
    name: str = "owl"

    def __post_init__(self) -> None:
        check_sparsity(self.target_sparsity)
        if not self.outlier_m > 0:
            raise UsageError(f"OWL's outlier threshold M must be positive, got {self.outlier_m:g}")
        if not 0 <= self.owl_lambda < 0.5:
            raise UsageError(f"OWL's λ must be in [0, 0.5), got {self.owl_lambda:g}")

    def allocate(self, problem: Problem) -> Pick:
        if problem.model is None or not problem.targets:
            raise UsageError("the owl allocation needs the model and its prunable layers")
        grouped = blocks(problem.targets, self.per_block)
        ratios = cached_ratios(problem, grouped, [self.outlier_m], self.per_block)[self.outlier_m]
        allocation, spread, shift = owl_allocation(grouped, ratios, self.target_sparsity, self.owl_lambda)
        details = {"target_sparsity": self.target_sparsity, "M": self.outlier_m, "lambda": self.owl_lambda,
                   "outlier_ratio": ratios, "offset": spread, "shift": shift}
        return Pick(allocation, None, dict.fromkeys(allocation, self.name), details)
