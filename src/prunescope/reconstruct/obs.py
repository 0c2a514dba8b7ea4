"""One layer's OBS reconstruction (SparseGPT's sweep, an exact re-fit) from its input rows.

The method and what this implementation adds are described in :mod:`prunescope.reconstruct`.

:func:`reconstruct_layer` reads the rows (M, d_in) that the layer multiplies, in pairs
(pruned network's, dense network's), batch by batch: so memory is one layer's H and the two
cross products of the dense target, whoever produces the rows (the whole model, or one block).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.calibration import bias_of
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.patterns import Pattern
from prunescope.targets import Target

_MAX_DAMPING_RAISES = 6


@dataclass(frozen=True)
class LayerReconstruction:
    """One reconstructed layer.

    error_masked / error_reconstructed: ‖Y_dense − Ŷ‖² / ‖Y_dense‖² on the calibration set,
    Y_dense the dense layer's outputs on the dense network's inputs and Ŷ the pruned layer's
    on the pruned network's inputs; "masked" keeps the dense weights under the same mask.
    damping: λ used, as a fraction of mean(diag H) (raised ×10 while H was not positive definite).
    """

    name: str
    removed: int
    numel: int
    error_masked: float
    error_reconstructed: float
    damping: float
    seconds: float


def _augmented(rows: torch.Tensor, bias: bool) -> torch.Tensor:
    rows = rows.double()
    return torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1) if bias else rows


def reconstruct_layer(
    module: nn.Module,
    target: Target,
    sparsity: float,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    mask: torch.Tensor | None,
    refit: bool,
    blocksize: int,
    damping: float,
    pattern: Pattern | None = None,
) -> tuple[LayerReconstruction, torch.Tensor]:
    """Prune ``target`` (a tensor of ``module``) to ``sparsity`` in place, reconstructing it; its record and
    keep-mask (the shape of the tensor).

    pairs: per batch, the rows (M, d_in) the layer multiplies in the pruned network (X̃) and in the
    dense one (X), the same examples in the same order (the same tensor where they are equal).
    """
    start = time.perf_counter()
    bias = bias_of(module, target.param)
    has_bias = bias is not None
    # Second moments of the pruned (X̃) and dense (X) inputs: H = X̃ᵀX̃, cross = X̃ᵀX, dense_h = XᵀX.
    h = cross = dense_h = None
    for pruned_rows, dense_rows in pairs:
        x_tilde, x = _augmented(pruned_rows, has_bias), _augmented(dense_rows, has_bias)
        h = x_tilde.T @ x_tilde if h is None else h + x_tilde.T @ x_tilde
        cross = x_tilde.T @ x if cross is None else cross + x_tilde.T @ x
        dense_h = x.T @ x if dense_h is None else dense_h + x.T @ x
    assert h is not None and cross is not None and dense_h is not None

    weight = getattr(module, target.param)
    w_dense = _augmented_weight(target.matrix(weight), bias)  # (out, fan_in[+1]), whatever the storage
    columns = w_dense.shape[1] - int(has_bias)
    h_damped, used = damped(h, damping)
    # W* = argmin ‖X W_denseᵀ − X̃ Vᵀ‖² + λ‖V − W_dense‖²: the dense target seen through the pruned inputs.
    lam = h_damped - h
    w_star = torch.linalg.solve(h_damped, (cross + lam) @ w_dense.T).T
    k = removed_count(sparsity, target.numel)
    given = None if mask is None else target.matrix(mask)
    keep, weights = _sweep(w_star, h_damped, columns, k, blocksize, given, pattern)
    if refit:
        weights = _refit(w_star, h_damped, keep)
    masked = w_dense * keep

    def error(w: torch.Tensor) -> float:
        target_energy = torch.einsum("ij,jk,ik->", w_dense, dense_h, w_dense)
        residual = (
            target_energy - 2 * torch.einsum("ij,kj,ik->", w_dense, cross, w) + torch.einsum("ij,jk,ik->", w, h, w)
        )
        return float(residual.clamp_min(0) / target_energy.clamp_min(torch.finfo(torch.float64).tiny))

    _write(target, weight, bias, weights)
    layer = LayerReconstruction(
        target.name, k, target.numel, error(masked), error(weights), used, time.perf_counter() - start
    )
    return layer, target.from_matrix(keep[:, :columns])


def _augmented_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(d_out, d_in) weights with the bias as a last column, in float64."""
    w = weight.detach().double()
    return torch.cat([w, bias.detach().double().unsqueeze(1)], 1) if bias is not None else w


def damped(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """H + λ·mean(diag H)·I, λ raised ×10 until H is positive definite; returns it and the λ used."""
    scale = float(torch.diag(h).mean()) or 1.0
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    for attempt in range(_MAX_DAMPING_RAISES):
        lam = damping * 10**attempt
        damped = h + lam * scale * eye
        if torch.linalg.cholesky_ex(damped).info == 0:
            return damped, lam
    raise UsageError(f"the calibration Hessian stays singular up to dampening {lam:g}: use more calibration examples")


def _upper_inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹: row q holds the OBS update of column q given columns < q are fixed."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def _block_counts(k: int, columns: int, blocksize: int) -> list[tuple[int, int, int]]:
    """(first column, end column, weights to remove) per block; removals spread by cumulative rounding."""
    blocks = []
    for first in range(0, columns, blocksize):
        end = min(first + blocksize, columns)
        blocks.append((first, end, round(k * end / columns) - round(k * first / columns)))
    return blocks


def _sweep(
    w: torch.Tensor, h: torch.Tensor, columns: int, k: int, blocksize: int, given: torch.Tensor | None,
    pattern: Pattern | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A SparseGPT sweep over ``w`` (d_out × d_in[+1]): (keep-mask, compensated weights).

    The mask of each column block is ``given`` or chosen by OBS saliency w² / [H⁻¹]_qq; with
    ``pattern`` (N:M) instead each group of M columns, when the sweep reaches it, keeps the N
    most salient weights of every row. Columns from ``columns`` on (the bias) are never pruned.
    """
    w = w.clone()
    hinv = _upper_inverse_factor(h)
    keep = torch.ones_like(w, dtype=torch.bool)
    if given is not None:
        keep[:, :columns] = given.to(w.device)
    for first, end, remove in _block_counts(k, columns, blocksize):
        if given is None and pattern is None and remove:
            saliency = w[:, first:end] ** 2 / torch.diag(hinv)[first:end] ** 2
            block_keep = torch.ones(saliency.numel(), dtype=torch.bool, device=w.device)
            block_keep[torch.topk(saliency.flatten(), remove, largest=False).indices] = False
            keep[:, first:end] = block_keep.view(saliency.shape)
        for q in range(first, end):
            if given is None and pattern is not None and q % pattern.m == 0:
                saliency = w[:, q : q + pattern.m] ** 2 / torch.diag(hinv)[q : q + pattern.m] ** 2
                group = torch.zeros_like(saliency, dtype=torch.bool)
                keep[:, q : q + pattern.m] = group.scatter_(1, torch.topk(saliency, pattern.n, dim=1).indices, True)
            error = (w[:, q] * ~keep[:, q]) / hinv[q, q]
            w[:, q:] -= error.unsqueeze(1) * hinv[q, q:].unsqueeze(0)
    return keep, w * keep


def _refit(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per row, the kept weights minimising (w − v)ᵀ H (w − v) with the pruned ones at zero."""
    result = torch.zeros_like(w)
    hw = w @ h  # row r: (H w_r)ᵀ, since H is symmetric
    for row in range(len(w)):
        kept = keep[row].nonzero().squeeze(1)
        if len(kept):
            result[row, kept] = torch.linalg.solve(h[kept][:, kept], hw[row, kept])
    return result


def _write(target: Target, weight: torch.Tensor, bias: torch.Tensor | None, weights: torch.Tensor) -> None:
    """Write the augmented (out, fan_in[+1]) ``weights`` back into the tensor's own layout: the last column into
    ``bias`` (a view of the parameter), if any."""
    with torch.no_grad():
        if bias is not None:
            bias.copy_(weights[:, -1].to(bias.dtype))
            weights = weights[:, :-1]
        weight.copy_(target.from_matrix(weights).to(weight.dtype))
