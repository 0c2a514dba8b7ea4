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

- **Block by block** (:mod:`prunescope.reconstruct.sequence`): where the layers lie in a chain
  of blocks (a transformer's decoder layers), the calibration inputs run through the
  embeddings once, each block's layers are reconstructed from the block's stored inputs and its
  pruned outputs become the next block's inputs, as SparseGPT's code does; the result is the
  whole-model path's up to rounding, with one block's inputs and one dense block in memory
  instead of a copy of the whole model. Elsewhere (and for layers outside the blocks) every
  layer is fed through the whole model; ``Reconstruction.plan`` says which and why.

Memory is one layer's H (and the two cross products of the dense target) at a time, plus block
by block one block's inputs. Calibration inputs come from the train split; no label is read.
The layer's sweep and re-fit live in :mod:`prunescope.reconstruct.obs`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn

from prunescope.calibration import calibration_inputs, layer_inputs, refuse, unsupported
from prunescope.criteria import Scores
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.masks import Masks, check_sparsity, compute_masks
from prunescope.patterns import Pattern, PatternPruning, check_pattern, check_widths, pattern_masks
from prunescope.reconstruct.obs import LayerReconstruction, reconstruct_layer
from prunescope.reconstruct.sequence import BlockInputs, BlockPlan, plan
from prunescope.targets import Target, flow_order
from prunescope.units import BlockUnits, ExpandedPruning, Pruning, WeightPruning

SELECTIONS = ("obs", "mask")
__all__ = ["FALLBACK_REMEDY", "SELECTIONS", "BlockPlan", "LayerReconstruction", "ReconstructedPruning",
           "Reconstruction", "fallen_back", "reconstruct", "reconstructing", "reconstruction_plan"]


@dataclass(frozen=True)
class Reconstruction:
    """The layers reconstructed, and ``fallback``: the layers pruned with the criterion's masks alone because
    their inputs cannot be captured ({name: why}). ``masks``: the keep-mask of every pruned layer (not saved)."""

    layers: list[LayerReconstruction]
    calibration: int
    seconds: float
    fallback: dict[str, str] = field(default_factory=dict)
    masks: Masks = field(default_factory=dict, repr=False)
    plan: str = ""  # block by block, or through the whole model and why (BlockPlan.line)
    block_inputs_peak_bytes: int = 0  # block by block: the most bytes of block inputs held at once (0: whole model)

    def to_dict(self) -> dict:
        """``result.json``'s ``reconstruction``: calibration size, seconds, per-layer errors, fallen-back layers,
        how it ran (block by block or through the whole model) and the block inputs it held at most."""
        return {"calibration": self.calibration, "seconds": self.seconds, "layers": [asdict(x) for x in self.layers],
                "fallback": self.fallback, "plan": self.plan, "block_inputs_peak_bytes": self.block_inputs_peak_bytes}


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
    blockwise: bool = True,
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
    blockwise: block by block where the model's targets lie in a chain of blocks
        (:mod:`prunescope.reconstruct.sequence`: one block's inputs in memory, the same result up to
        rounding); False, or a model without such blocks: every layer through the whole model
        (``Reconstruction.plan`` says which and why).
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
    ordered = flow_order(model, chosen, calibration[:1])
    steps = (plan(model, ordered, calibration[:1]) if blockwise
             else BlockPlan(before=ordered, reason="block by block turned off (blockwise=False)"))
    # A dense copy of the whole model only where a layer outside the blocks is reconstructed through it.
    dense = copy.deepcopy(model) if any(t.name not in plain for t in (*steps.before, *steps.after)) else None
    layers: list[LayerReconstruction] = []
    kept: Masks = {}

    def prune(target: Target, pairs: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Mask ``target`` (falling back), or reconstruct it from the row pairs ``pairs()`` yields."""
        if target.name in plain:
            kept[target.name] = masks[target.name]
            with torch.no_grad():
                getattr(model.get_submodule(target.module), target.param).masked_fill_(~masks[target.name], 0)
            return
        layer, kept[target.name] = reconstruct_layer(
            model.get_submodule(target.module), target, allocation[target.name], pairs(),
            mask=None if masks is None or select == "obs" else masks[target.name],
            refit=refit, blocksize=blocksize, damping=damping, pattern=pattern,
        )
        layers.append(layer)

    inputs = BlockInputs.at(model, steps.blocks[0], calibration, batch_size) if steps.blocks else None  # dense
    for target in steps.before:
        prune(target, partial(_model_rows, model, dense, target, calibration, batch_size, sequential))
    peak = 0
    if inputs is not None:
        if steps.before:  # the first block's inputs in the pruned network differ from the dense ones
            inputs = BlockInputs(BlockInputs.at(model, steps.blocks[0], calibration, batch_size).pruned,
                                 inputs.dense, inputs.rest)
        last = max(steps.blocks.index(b) for b in steps.inside)
        for index, block in enumerate(steps.blocks[: last + 1]):
            module, members = model.get_submodule(block), steps.inside.get(block, [])
            dense_block = copy.deepcopy(module) if members else module
            for target in members:
                prune(target, partial(inputs.rows, module, dense_block, target.module[len(block) + 1 :],
                                      target.param, sequential))
            if index < last:
                inputs.advance(module, dense_block, bool(members))
        peak = inputs.peak_bytes
    for target in steps.after:
        prune(target, partial(_model_rows, model, dense, target, calibration, batch_size, sequential))
    if pattern is not None:
        check_pattern(kept, pattern, layouts=named)
    return Reconstruction(layers, len(calibration), time.perf_counter() - start, plain, kept, steps.line(), peak)


def reconstruction_plan(model: nn.Module, targets: Sequence[Target], example: torch.Tensor) -> BlockPlan:
    """How :func:`reconstruct` would run on ``targets`` of ``model`` (:func:`~prunescope.reconstruct.sequence.plan`):
    block by block, or through the whole model and why; ``example``: a batch of inputs."""
    return plan(model, flow_order(model, targets, example), example)


def _model_rows(
    model: nn.Module, dense: nn.Module | None, target: Target, calibration: torch.Tensor, batch_size: int,
    sequential: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch, the rows ``target`` multiplies in the pruned ``model`` and in the ``dense`` copy, each through the
    whole network (``sequential=False``: the dense rows twice)."""
    assert dense is not None  # made for every reconstructed target outside the blocks
    # One capture per model: two live captures on one model would stop each other's forward pass.
    dense_rows = layer_inputs(dense, target.module, calibration, batch_size=batch_size, param=target.param)
    if not sequential:
        return ((rows, rows) for rows in dense_rows)
    pruned_rows = layer_inputs(model, target.module, calibration, batch_size=batch_size, param=target.param)
    return zip(pruned_rows, dense_rows, strict=True)


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


