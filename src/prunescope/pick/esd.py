"""The heavy-tail exponent of a weight matrix's empirical spectral density (ESD): PL_Alpha_Hill.

The eigenvalues λ of WᵀW (the squared singular values of W, ascending) are fitted by a
power law p(λ) ∝ λ^(−α) above a cut-off λ_min with the continuous maximum-likelihood
(Hill) estimator over the n eigenvalues λ_i ≥ λ_min (Clauset, Shalizi & Newman, "Power-law
distributions in empirical data", 2009):

    α = 1 + n / Σ_i ln(λ_i / λ_min),

and the cut-off is chosen among the candidates by the smallest Kolmogorov–Smirnov distance
D = max_i |1 − (λ_i / λ_min)^(1 − α) − i / n| between the fitted and the empirical tail.
This is the estimator of AlphaPruning's reference code (Lu et al., NeurIPS 2024; github
haiquanlu/AlphaPruning, ``lib/esd_utils.py``, ``net_esd_estimator``) and of weightwatcher's
``WWFit``. ``tail`` chooses the candidates:

- ``peak`` (AlphaPruning's default metric ``alpha_peak``, ``fix_fingers='xmin_peak'``):
  from a 100-bin histogram of log10 λ, the left edge p of its fullest bin; candidates from
  the smallest eigenvalue (the reference bounds them below by log10(0.95 p), which it
  compares with eigenvalues themselves, kept here so that alphas match the published code)
  up to 1.5 p;
- ``mid`` (``alpha_mid``, ``fix_fingers='xmin_mid'``, TempBalance's PL_Alpha_Hill with
  k = n/2): the one cut-off at index ⌊n/2⌋, no search;
- ``ks``: every eigenvalue but the largest (weightwatcher's default power-law fit).

A convolution's kernel (out, in, k…) gives one (out × in) matrix per kernel position, their
eigenvalues pooled, as the reference does for Conv2d. Zero eigenvalues (rank-deficient W)
are dropped: their logarithm is −∞. Computed in float64.
"""

from __future__ import annotations

import math

import torch

from prunescope.errors import UsageError

TAILS = ("peak", "mid", "ks")
_BINS = 100


def eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Ascending non-zero eigenvalues of WᵀW (float64): of every kernel position's (out × in) matrix, pooled."""
    if weight.dim() < 2:
        raise UsageError(f"a spectrum needs a matrix, got a tensor of shape {tuple(weight.shape)}")
    matrix = weight.detach().double().cpu()
    if matrix.dim() > 2:  # (out, in, k…) → (k…, out, in), as the reference does for Conv2d
        matrix = matrix.flatten(2).permute(2, 0, 1)
    values = (torch.linalg.svdvals(matrix) ** 2).flatten()
    values = values[values > 0]
    if len(values) < 2:
        raise UsageError(f"a spectrum needs at least two non-zero eigenvalues, got {len(values)}")
    return values.sort().values


def _fit(values: torch.Tensor, i: int, logs: torch.Tensor) -> tuple[float, float]:
    """(α, KS distance) of the tail ``values[i:]`` with λ_min = values[i]; D = 1 where α ≤ 1 (as the reference)."""
    n = len(values) - i
    alpha = 1 + n / float(logs[i:].sum() - n * logs[i])
    if not alpha > 1:
        return alpha, 1.0
    fitted = 1 - (values[i:] / values[i]) ** (1 - alpha)
    empirical = torch.arange(n, dtype=values.dtype) / n
    return alpha, float((fitted - empirical).abs().max())


def hill_alpha(values: torch.Tensor, tail: str = "peak") -> float:
    """PL_Alpha_Hill of ascending positive eigenvalues ``values`` with the cut-off rule ``tail`` (see the module)."""
    if tail not in TAILS:
        raise UsageError(f"unknown tail {tail!r}: use one of {', '.join(TAILS)}")
    values = values.double()
    logs = values.log()
    if tail == "mid":
        return _fit(values, len(values) // 2, logs)[0]
    lowest, highest = -math.inf, math.inf
    if tail == "peak":
        log10 = values.log10()
        counts = torch.histc(log10, _BINS, min=float(log10.min()), max=float(log10.max()))
        edges = torch.linspace(float(log10.min()), float(log10.max()), _BINS + 1, dtype=values.dtype)
        peak = 10 ** float(edges[int(counts.argmax())])
        lowest, highest = math.log10(0.95 * peak), 1.5 * peak  # sic: the reference's lower bound (module docstring)
    best_alpha, best_distance = 0.0, 1.0  # the reference's initial values: a search that fits nothing gives 0
    found = False
    for i in range(len(values) - 1):
        xmin = float(values[i])
        if xmin < lowest:
            continue
        if xmin > highest:
            break
        alpha, distance = _fit(values, i, logs)
        if not found or distance < best_distance:
            best_alpha, best_distance, found = alpha, distance, True
    return best_alpha
