"""Layer-wise OBS reconstruction: prune each layer so that its outputs change the least.

The OBS family (Optimal Brain Compression, Frantar et al. 2022; SparseGPT, Frantar &
Alistarh 2023) prunes a layer with weight W (d_out × d_in, :meth:`~prunescope.targets.Target.matrix`:
a Hugging Face ``Conv1D``'s (in, out) weight read transposed and written back so) by minimising the change of its
outputs on calibration inputs X, ‖W X − Ŵ X‖²_F, under the mask. With H = XᵀX (d_in ×
d_in, here from rows of X) plus a dampening λ·mean(diag H)·I, removing weight q of a row
and compensating the rest costs w_q² / [H⁻¹]_qq and moves the row by
−(w_q / [H⁻¹]_qq) · H⁻¹_{:,q}. SparseGPT applies this column by column, left to right,
with the upper Cholesky factor of H⁻¹, choosing each block's mask by that saliency.

What this implementation adds, each for a measured reason:

- **The dense layer's outputs are the target**, not the pruned-so-far network's: layers
  run in data-flow order, each fed the outputs of the already pruned layers, and layer ℓ
  minimises ‖X_dense W_denseᵀ − X̃ Ŵᵀ‖², which also corrects what earlier layers lost.
  Since that equals ‖X̃ (W* − Ŵ)ᵀ‖² + const for the unconstrained optimum W*, OBS simply
  runs on W* (computed with the dampening pulling towards W_dense, so a first layer's W*
  is W_dense exactly).
- **The bias is a never-pruned last column** (inputs augmented with ones), so every
  pruned weight's error is partly absorbed by it.
- **Exact counts**: each layer removes exactly ``round(s · numel)`` weights, spread over
  the column blocks by cumulative rounding, so any allocation's counts hold.
- **An exact re-fit** of every row's kept weights (least squares on H restricted to the
  kept set) after the OBS sweep, which the sweep's one-directional updates only
  approximate; it never increases the layer's error.
- **N:M** (``pattern``, :mod:`prunescope.patterns`): SparseGPT's semi-structured variant. When
  the sweep reaches the first column of each group of M input columns, every row keeps the N
  of them with the highest OBS saliency w² / [H⁻¹]_qq² of the weights as compensated so far,
  so that each row holds exactly N of every M (Frantar & Alistarh 2023, section 3, "Adaptive
  mask selection" and "Extension to semi-structured sparsity"); with ``select="mask"`` the
  criterion's N:M masks are kept.

Memory is one layer's H (and the two cross products of the dense target) at a time.
Calibration inputs come from the train split; no label is read.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunescope.calibration import (
    bias_of,
    calibration_inputs,
    layer_inputs,
    refuse,
    unsupported,
)
from prunescope.criteria import Scores
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.masks import Masks, check_sparsity, compute_masks, removed_count
from prunescope.patterns import Pattern, PatternPruning, check_pattern, check_widths, pattern_masks
from prunescope.targets import Target, flow_order
from prunescope.units import BlockUnits, ExpandedPruning, Pruning, WeightPruning

SELECTIONS = ("obs", "mask")
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


@dataclass(frozen=True)
class Reconstruction:
    """The layers reconstructed, and ``fallback``: the layers pruned with the criterion's masks alone because
    their inputs cannot be captured ({name: why}). ``masks``: the keep-mask of every pruned layer (not saved)."""

    layers: list[LayerReconstruction]
    calibration: int
    seconds: float
    fallback: dict[str, str] = field(default_factory=dict)
    masks: Masks = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """``result.json``'s ``reconstruction``: calibration size, seconds, per-layer errors, fallen-back layers."""
        return {"calibration": self.calibration, "seconds": self.seconds, "layers": [asdict(x) for x in self.layers],
                "fallback": self.fallback}


FALLBACK_REMEDY = "prune such layers with the criterion's masks alone (--reconstruct-fallback)"


def reconstruct(
    model: nn.Module,
    targets: Sequence[Target],
    allocation: Mapping[str, float],
    calibration: torch.Tensor,
    *,
    masks: Masks | None = None,
    select: str = "obs",
    fallback: bool = False,
    refit: bool = True,
    sequential: bool = True,
    blocksize: int = 128,
    damping: float = 0.01,
    batch_size: int = 256,
    pattern: Pattern | None = None,
) -> Reconstruction:
    """Prune ``model`` in place to ``allocation`` ({target name: sparsity}), reconstructing each layer.

    calibration: train inputs (N, *input_shape); never val or test.
    select: ``obs`` chooses each layer's mask by OBS saliency; ``mask`` keeps the given
        ``masks`` (from any criterion) and only updates the kept weights.
    fallback: a layer whose inputs cannot be captured (:func:`prunescope.calibration.unsupported`:
        recurrent gates, embeddings, cross-attention's packed projection…) is pruned with its
        mask in ``masks`` alone, in data-flow order, so that the layers after it are fitted to
        its pruned outputs; without it such a layer is a one-line UsageError.
    refit: re-fit every row's kept weights exactly after the sweep.
    sequential: feed each layer the outputs of the already pruned layers (default); False
        fits every layer on the dense network's inputs, independently of the others.
    pattern: N:M (:mod:`prunescope.patterns`): every target the allocation prunes keeps exactly
        N of every M weights along its input dimension (sparsity 1 − N/M, whatever the
        allocation says), masks chosen group by group (``obs``) or kept (``mask``: N:M masks).
    Targets absent from ``allocation`` (or at sparsity 0) are left untouched. Pruned weights
    are exactly zero afterwards; the model's weights are plain tensors (no re-parametrisation).
    """
    if select not in SELECTIONS:
        raise UsageError(f"unknown mask selection {select!r}: use {' or '.join(SELECTIONS)}")
    if select == "mask" and masks is None:
        raise UsageError("mask selection 'mask' needs the masks to keep")
    if len(calibration) < 1:
        raise UsageError("reconstruction needs at least one calibration example")
    if not damping > 0:
        raise UsageError(f"dampening must be positive, got {damping}")
    if blocksize < 1:
        raise UsageError(f"block size must be at least 1, got {blocksize}")
    named = {t.name: t for t in targets}
    unknown = [name for name in allocation if name not in named]
    if unknown:
        raise UsageError(f"unknown layer {unknown[0]!r} in allocation; known: {', '.join(named)}")
    chosen = [named[name] for name, s in allocation.items() if check_sparsity(s, f"sparsity of {name}") > 0]
    if pattern is not None:
        check_widths(chosen, pattern)
        allocation = {t.name: pattern.sparsity for t in chosen}
    plain = unsupported(model, chosen, calibration[:1])
    if not fallback:
        refuse(chosen, plain, FALLBACK_REMEDY)
    if plain and (masks is None or any(name not in masks for name in plain)):
        raise UsageError(f"{next(iter(plain))} falls back to the criterion's masks: pass them (masks)")
    start = time.perf_counter()
    dense = copy.deepcopy(model)
    ordered = flow_order(model, chosen, calibration[:1])
    layers, kept = [], {}
    for target in ordered:
        if target.name in plain:
            kept[target.name] = masks[target.name]
            with torch.no_grad():
                getattr(model.get_submodule(target.module), target.param).masked_fill_(~masks[target.name], 0)
            continue
        layer, kept[target.name] = _reconstruct_layer(
            model,
            dense,
            target,
            allocation[target.name],
            calibration,
            mask=None if masks is None or select == "obs" else masks[target.name],
            refit=refit,
            blocksize=blocksize,
            damping=damping,
            batch_size=batch_size,
            inputs_from=model if sequential else dense,
            pattern=pattern,
        )
        layers.append(layer)
    if pattern is not None:
        check_pattern(kept, pattern, layouts=named)
    return Reconstruction(layers, len(calibration), time.perf_counter() - start, plain, kept)


class ReconstructedPruning:
    """Pruning by reconstruction for a ``with`` block: the scan's ``Pruning`` protocol.

    ``applied(allocation)`` prunes ``model`` with :func:`reconstruct` (masks from ``scores``
    with ``select="mask"``, or chosen by OBS with ``select="obs"``) and restores every
    parameter bit-exactly on exit, also after an exception. ``last`` keeps the latest
    :class:`Reconstruction` (per-layer errors, seconds). ``fallback``: the targets pruned with
    the criterion's masks alone ({name: why}); without ``fallback=True`` any such target is
    refused when built.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        scores: Scores,
        calibration: torch.Tensor,
        *,
        select: str = "mask",
        fallback: bool = False,
        pattern: Pattern | None = None,
    ) -> None:
        if select not in SELECTIONS:
            raise UsageError(f"unknown mask selection {select!r}: use {' or '.join(SELECTIONS)}")
        self.fallback = unsupported(model, targets, calibration[:1])
        if not fallback:
            refuse(targets, self.fallback, FALLBACK_REMEDY)
        self.model, self.targets, self.scores = model, list(targets), scores
        self.calibration, self.select, self.pattern = calibration, select, pattern
        self.last: Reconstruction | None = None

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        """The model pruned to ``allocation`` and reconstructed on the calibration inputs, for a ``with``
        block; every parameter is restored bit-exactly afterwards (``last``: the reconstruction's record)."""
        pruned = {name: s for name, s in allocation.items() if s > 0}
        saved = [(p, p.detach().clone()) for p in self.model.parameters()]
        try:
            if pruned:
                # The criterion's masks: kept by select="mask", and those of the layers falling back.
                masked = {n: s for n, s in pruned.items() if self.select == "mask" or n in self.fallback}
                masks = (compute_masks(self.scores, masked) if self.pattern is None
                         else pattern_masks(self.scores, self.pattern, masked, {t.name: t for t in self.targets}))
                self.last = reconstruct(
                    self.model, self.targets, pruned, self.calibration, masks=masks,
                    select=self.select, fallback=bool(self.fallback), pattern=self.pattern,
                )
            yield self.model
        finally:
            with torch.no_grad():
                for parameter, original in saved:
                    parameter.copy_(original)


def reconstructing(
    pruning: WeightPruning, train: Split, select: str | None, calibration: int | None = None, *, fallback: bool = False,
    pattern: Pattern | None = None,
) -> Pruning:
    """``pruning`` itself when ``select`` is None, else its targets and scores pruned by reconstruction
    (:class:`ReconstructedPruning`) on ``calibration`` seeded ``train`` inputs; ``pattern``: N:M masks
    (without reconstruction, :class:`~prunescope.patterns.PatternPruning`). Block units
    (:class:`~prunescope.units.BlockUnits`) keep their block allocations, spread over the targets
    before either."""
    if select is None and pattern is None:
        return pruning
    if select is None:
        inner: Pruning = PatternPruning(pruning.model, pruning.targets, pruning.scores, pattern)
    else:
        inner = ReconstructedPruning(pruning.model, pruning.targets, pruning.scores,
                                     calibration_inputs(train, calibration), select=select, fallback=fallback,
                                     pattern=pattern)
    return ExpandedPruning(inner, pruning.expand) if isinstance(pruning, BlockUnits) else inner


def fallen_back(pruning: Pruning) -> dict[str, str]:
    """The layers ``pruning`` prunes with the criterion's masks alone instead of by reconstruction ({name: why})."""
    if isinstance(pruning, ExpandedPruning):
        return pruning.fallback
    return dict(pruning.fallback) if isinstance(pruning, ReconstructedPruning) else {}


def _augmented(rows: torch.Tensor, bias: bool) -> torch.Tensor:
    rows = rows.double()
    return torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1) if bias else rows


def _reconstruct_layer(
    model: nn.Module,
    dense: nn.Module,
    target: Target,
    sparsity: float,
    calibration: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    refit: bool,
    blocksize: int,
    damping: float,
    batch_size: int,
    inputs_from: nn.Module,
    pattern: Pattern | None = None,
) -> tuple[LayerReconstruction, torch.Tensor]:
    """The layer's reconstruction and its keep-mask (the shape of the tensor)."""
    start = time.perf_counter()
    module = model.get_submodule(target.module)
    bias = bias_of(module, target.param)
    has_bias = bias is not None
    # Second moments of the pruned (X̃) and dense (X) inputs: H = X̃ᵀX̃, cross = X̃ᵀX, dense_h = XᵀX.
    h = cross = dense_h = None
    dense_inputs = layer_inputs(dense, target.module, calibration, batch_size=batch_size, param=target.param)
    # One capture per model: two live captures on one model would stop each other's forward pass.
    pairs = (
        ((rows, rows) for rows in dense_inputs)
        if inputs_from is dense
        else zip(
            layer_inputs(inputs_from, target.module, calibration, batch_size=batch_size, param=target.param),
            dense_inputs,
            strict=True,
        )
    )
    for pruned_rows, dense_rows in pairs:
        x_tilde, x = _augmented(pruned_rows, has_bias), _augmented(dense_rows, has_bias)
        h = x_tilde.T @ x_tilde if h is None else h + x_tilde.T @ x_tilde
        cross = x_tilde.T @ x if cross is None else cross + x_tilde.T @ x
        dense_h = x.T @ x if dense_h is None else dense_h + x.T @ x
    assert h is not None and cross is not None and dense_h is not None

    weight = getattr(module, target.param)
    w_dense = _augmented_weight(target.matrix(weight), bias)  # (out, fan_in[+1]), whatever the storage
    columns = w_dense.shape[1] - int(has_bias)
    h_damped, used = _damped(h, damping)
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


def _damped(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
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
