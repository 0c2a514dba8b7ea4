"""AlphaPruning: layer-wise sparsities from the heavy-tail exponent of each layer's spectrum (Lu et al.,
"AlphaPruning: Using Heavy-Tailed Self Regularization Theory for Improved Layer-wise Pruning of Large
Language Models", NeurIPS 2024; reference code github haiquanlu/AlphaPruning, ``lib/prune.py``,
``ww_sparsity``).

At global sparsity s:

1. per target, α = PL_Alpha_Hill of the eigenvalues of WᵀW (:func:`prunescope.pick.esd.hill_alpha`,
   by default the reference's ``alpha_peak``); per block (the reference's default
   ``mapping_type="block_wise"``: a decoder layer; here :func:`prunescope.pick.spread.blocks`)
   the mean α of its targets;
2. a linear map of α into factors f_b = (1 − ε) + 2ε · (α_b − min α) / (max α − min α) ∈
   [1 − ε, 1 + ε] (all α equal: f_b = 1): a higher α, a less well-trained layer, is pruned more;
3. s_b = f_b · c with c = s · N / Σ_b n_b f_b, the reference's ``scaler``, which makes the removed
   total exactly s · N.

So the range is multiplicative, [s(1 − ε), s(1 + ε)] before the rescaling (what REFERENCES calls
[s − τ, s + τ], τ = sε), as in the reference code. Beyond it, every block is clipped to
[0, (n − 1)/n] with c re-solved, and counts are rounded exactly
(:func:`prunescope.pick.spread.solve`). Default ε = 0.3, the reference's ``--epsilon`` default
(its LLaMA scripts use 0.2 to 0.5 by model and method); :data:`EPSILON_GRID` is the range
``alpha-tuned`` selects from on val.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from prunescope.errors import UsageError
from prunescope.masks import check_sparsity
from prunescope.pick.allocator import Pick, Problem
from prunescope.pick.esd import TAILS, eigenvalues, hill_alpha
from prunescope.pick.spread import blocks, solve
from prunescope.targets import Target, effective_weight

EPSILON_DEFAULT = 0.3
EPSILON_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)


def layer_alphas(model: nn.Module, targets: Sequence[Target], tail: str = "peak") -> dict[str, float]:
    """``{target: PL_Alpha_Hill}`` of each target's effective weight (its spectrum does not depend on orientation)."""
    return {t.name: hill_alpha(eigenvalues(effective_weight(model, t)), tail) for t in targets}


def alpha_allocation(
    grouped: Mapping[str, Sequence[Target]], alphas: Mapping[str, float], sparsity: float, epsilon: float
) -> tuple[dict[str, float], dict[str, float], float]:
    """AlphaPruning's per-target sparsities from the targets' ``alphas`` at global ``sparsity``.

    Returns the allocation, the blocks' factors f_b in [1 − ε, 1 + ε], and the scale c (s_b = f_b · c).
    """
    block_alpha = {b: sum(alphas[t.name] for t in members) / len(members) for b, members in grouped.items()}
    low, high = min(block_alpha.values()), max(block_alpha.values())
    factors = {b: (1 - epsilon) + 2 * epsilon * (a - low) / (high - low) if high > low else 1.0
               for b, a in block_alpha.items()}
    allocation, scale = solve(grouped, dict.fromkeys(grouped, 0.0), factors, sparsity)
    return allocation, factors, scale


@dataclass(frozen=True)
class AlphaPruning:
    """AlphaPruning at ``target_sparsity`` with range ``epsilon`` (ε) and cut-off rule ``tail``; see the module."""

    target_sparsity: float
    epsilon: float = EPSILON_DEFAULT
    tail: str = "peak"
    per_block: bool = True
    name: str = "alpha"

    def __post_init__(self) -> None:
        check_sparsity(self.target_sparsity)
        if not 0 <= self.epsilon < 1:
            raise UsageError(f"AlphaPruning's ε must be in [0, 1), got {self.epsilon:g}")
        if self.tail not in TAILS:
            raise UsageError(f"unknown tail {self.tail!r}: use one of {', '.join(TAILS)}")

    def allocate(self, problem: Problem) -> Pick:
        if problem.model is None or not problem.targets:
            raise UsageError("the alpha allocation needs the model and its prunable layers")
        key = ("alpha", self.tail, tuple(t.name for t in problem.targets))
        if key not in problem.cache:
            problem.cache[key] = layer_alphas(problem.model, problem.targets, self.tail)
        alphas = problem.cache[key]
        grouped = blocks(problem.targets, self.per_block)
        allocation, factors, scale = alpha_allocation(grouped, alphas, self.target_sparsity, self.epsilon)
        details = {"target_sparsity": self.target_sparsity, "epsilon": self.epsilon, "tail": self.tail,
                   "alpha": alphas, "factor": factors, "scale": scale}
        return Pick(allocation, None, dict.fromkeys(allocation, self.name), details)
