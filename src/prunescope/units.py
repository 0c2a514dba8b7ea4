"""The unit of pruning: a weight tensor (unstructured) or a coupled channel group (structured), one protocol.

A :class:`Unit` is what a sensitivity curve, a picker and an allocation speak of: its name,
its size (what a sparsity is a fraction of: the tensor's weights, or the group's channels),
and the parameters and dense MACs per sample it carries. The units of one model at one
granularity (:class:`Units`, found by :func:`find_units`) score themselves under a criterion
when found, mask an allocation for a ``with`` block and restore it bit-exactly
(:meth:`Units.applied`), and give the model's exact footprint under an allocation
(:meth:`Units.footprint`). Scan, pick and verify take units and never ask which kind they hold.

- ``weight``: :class:`WeightPruning`, the weight tensors of :func:`prunescope.targets.find_targets`,
  scored by a :mod:`prunescope.criteria` criterion; an allocation zeroes the lowest-scored weights.
  With ``units="block"`` (:class:`BlockUnits`) a unit is instead one block of the network
  (:func:`prunescope.blocks.block_units`: a transformer's decoder layer, all its matrices
  together), one sparsity per block spread over its matrices by count with the block's count exact.
- ``channel``: :class:`ChannelUnits`, the coupled channel groups of
  :func:`prunescope.structured.groups.find_groups` (Torch-Pruning's dependency graph, traced
  once), scored by a group importance of :mod:`prunescope.structured.importance`; an
  allocation masks the least important channels, which computes what their removal would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from prunescope.blocks import block_units, spread
from prunescope.criteria import CRITERIA, Scores, compute_scores
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.masks import Masks, above, applied, compute_masks, global_sparsity, lowest_cut, removed_count
from prunescope.measure import count_macs
from prunescope.structured.allocation import check_round_to
from prunescope.structured.find import find_groups
from prunescope.structured.groups import Footprint
from prunescope.structured.importance import IMPORTANCES, group_scores
from prunescope.structured.latency import LatencyTable
from prunescope.structured.pruning import ChannelPruning, masking_error
from prunescope.targets import Target, chosen_targets, find_targets

MASKING_CHECK_BATCH = 32  # val examples on which channel masking is checked against removal
MASKING_TOLERANCE = 1e-4  # relative to the largest output: above float rounding, below any real reader


@dataclass(frozen=True)
class Unit:
    """One prunable unit. size: weights of the tensor, or channels of the group (a sparsity is a fraction of it).
    params: parameters it carries dense. macs: dense MACs per sample of those parameters. kind: linear, conv,
    recurrent or attention (a group's: its root layer's)."""

    name: str
    kind: str
    size: int
    params: int
    macs: int


class Pruning(Protocol):
    """Prunes a model in place with an allocation ``{unit: sparsity}`` for a ``with`` block, then restores it."""

    model: nn.Module

    def applied(self, allocation: Mapping[str, float]) -> contextlib.AbstractContextManager[nn.Module]: ...


class Units(Pruning, Protocol):
    """The units of one model at one granularity, scored, with masking and the exact footprint.

    units: the chosen units, in model order. every: the names of all units of the model (before
    ``include`` / ``exclude``). skipped: layers left out, with the reason (channel groups).
    """

    granularity: str
    unit_kind: str  # what one unit is: a matrix or a block (weights), a group (channels)
    units: list[Unit]
    every: list[str]
    skipped: dict[str, str]
    round_to: int
    # Whether removing several units saves exactly the sum of what each saves alone (single
    # weights do); coupled channel groups share slices, so budgets on them need ``footprint``.
    additive: bool
    # Whether a level is reported as the count it removes, k / size (few, whole elements: channels).
    whole_levels: bool

    def footprint(self, allocation: Mapping[str, float]) -> Footprint:
        """The whole model's exact parameters and MACs per sample under ``allocation``."""
        ...

    def latency_table(self, device: str | torch.device, batch_size: int) -> LatencyTable | None:
        """Per-unit latency savings timed on ``device`` (channel units), None where removing a unit saves no time."""
        ...

    def summary(self, allocation: Mapping[str, float]) -> dict | None:
        """What a pick file records about the model under ``allocation`` beyond the sparsities (None: nothing)."""
        ...

    def removed_fraction(self, allocation: Mapping[str, float]) -> float:
        """The share of what the units measure (weights, or the model's parameters) that ``allocation`` removes."""
        ...

    def expand(self, allocation: Mapping[str, float]) -> dict[str, float]:
        """``allocation`` as what ``prunescope prune`` applies: per target (block units: spread) or per group."""
        ...


class WeightPruning:
    """Unstructured pruning: per target the ``round(sparsity · numel)`` lowest-scored weights are zeroed.

    Masks are those of :func:`prunescope.masks.compute_masks`, computed faster for one
    target: the mask is ``score > k-th lowest`` (one selection, :func:`prunescope.masks.lowest_cut`),
    which is exactly the ``k`` lowest when it removes exactly ``k`` (no tie at the ``k``-th); on
    a tie ``compute_masks`` itself decides. Only the cuts are kept (one number per target and
    count), so that a scan holds no copy of the scores beyond ``scores`` itself.

    As :class:`Units` (``granularity="weight"``), built by :func:`find_units` with the
    model's input shape: each target's unit carries its weights and their dense MACs.
    """

    granularity = "weight"
    unit_kind = "matrix"
    round_to = 1
    additive = True
    whole_levels = False

    def __init__(
        self, model: nn.Module, targets: Sequence[Target], scores: Scores, input_shape: Sequence[int] | None = None
    ) -> None:
        self.model = model
        self.targets = list(targets)
        self.scores = scores
        self.skipped: dict[str, str] = {}
        self.every = [t.name for t in find_targets(model)]
        macs = count_macs(model, tuple(input_shape)) if input_shape is not None else None
        self._dense_macs = macs.dense if macs is not None else 0
        self._macs = {t.name: macs.per_weight.get(t.name, (0, 0))[0] if macs else 0 for t in self.targets}
        self.units = [Unit(t.name, t.kind, t.numel, t.numel, self._macs[t.name]) for t in self.targets]
        # (target, k) -> its cut (None: compute_masks decides); a scan measures one point on several subsets.
        self._cuts: dict[tuple[str, int], torch.Tensor | None] = {}

    def masks(self, target: str, sparsity: float) -> Masks:
        """``compute_masks(scores, {target: sparsity})``, by selecting the ``k``-th lowest score where exact."""
        score = self.scores[target]
        k = removed_count(sparsity, score.numel())
        if (target, k) not in self._cuts:
            self._cuts[target, k] = lowest_cut(score, k) if 0 < k <= score.numel() else None
        cut = self._cuts[target, k]
        if cut is not None:
            return {target: above(score, cut)}
        return compute_masks(self.scores, {target: sparsity})

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        pruned = {name: s for name, s in allocation.items() if s > 0}
        single = len(pruned) == 1  # the scan's case: one target, from its sorted scores
        masks = self.masks(*next(iter(pruned.items()))) if single else compute_masks(self.scores, pruned)
        with applied(self.model, self.targets, masks):
            yield self.model

    def expand(self, allocation: Mapping[str, float]) -> dict[str, float]:
        """The allocation itself: its units are the targets."""
        return dict(allocation)

    def footprint(self, allocation: Mapping[str, float]) -> Footprint:
        """The model's parameters left non-zero by the allocation, and its effective MACs per sample
        (``Σ macs_l · (1 - s_l)`` over the targets, every other MAC unchanged)."""
        total = sum(p.numel() for p in self.model.parameters())
        removed = sum(removed_count(allocation.get(t.name, 0.0), t.numel) for t in self.targets)
        saved = sum(self._macs[t.name] * allocation.get(t.name, 0.0) for t in self.targets)
        return Footprint(total - removed, round(self._dense_macs - saved))

    def removed_fraction(self, allocation: Mapping[str, float]) -> float:
        """Removed weights over the weights of every target of the model (the global sparsity)."""
        return global_sparsity(dict(allocation), find_targets(self.model))

    def latency_table(self, device: str | torch.device, batch_size: int) -> None:
        """None: zeroed weights leave the dense kernels as slow."""
        return None

    def summary(self, allocation: Mapping[str, float]) -> None:
        return None


class BlockUnits(WeightPruning):
    """Unstructured pruning with one unit per block of the network (``units="block"``).

    The targets are grouped by :func:`prunescope.blocks.block_units` (a decoder layer's
    q/k/v/o and MLP matrices are one unit; a layer outside every block is a unit of its own).
    A unit's size is its matrices' weights, and an allocation ``{block: s}`` removes exactly
    ``round(s · n_block)`` of them, spread over its matrices by count (:func:`prunescope.blocks.spread`,
    each matrix at ``s`` up to one weight), each matrix's weights chosen by the criterion.
    ``members``: each unit's target names. ``expand``: a block allocation as per-target sparsities.
    """

    unit_kind = "block"

    def __init__(
        self, model: nn.Module, targets: Sequence[Target], scores: Scores, input_shape: Sequence[int] | None = None
    ) -> None:
        super().__init__(model, targets, scores, input_shape)
        self.grouped = block_units(self.targets)
        if all(len(members) == 1 for members in self.grouped.values()):
            raise UsageError("--units block: no block of this model holds more than one prunable matrix (its layers "
                             "are not in numbered blocks such as a transformer's decoder layers): use --units matrix")
        self.members = {block: [t.name for t in members] for block, members in self.grouped.items()}
        self.every = list(block_units(find_targets(model)))
        self.units = [Unit(block, "block", sum(t.numel for t in members), sum(t.numel for t in members),
                           sum(self._macs[t.name] for t in members)) for block, members in self.grouped.items()]

    def expand(self, allocation: Mapping[str, float]) -> dict[str, float]:
        """``{target: sparsity}`` of a ``{block: sparsity}`` allocation, each block's count exact."""
        return spread(allocation, self.grouped)

    def applied(self, allocation: Mapping[str, float]) -> contextlib.AbstractContextManager[nn.Module]:
        """The model with the block allocation's per-target masks, for a ``with`` block (restored after)."""
        return super().applied(self.expand(allocation))

    def footprint(self, allocation: Mapping[str, float]) -> Footprint:
        """:meth:`WeightPruning.footprint` of the block allocation spread over the targets."""
        return super().footprint(self.expand(allocation))

    def removed_fraction(self, allocation: Mapping[str, float]) -> float:
        """Removed weights over the weights of every target of the model, for a block allocation."""
        return super().removed_fraction(self.expand(allocation))


class ExpandedPruning:
    """A per-target :class:`Pruning` (``inner``) driven by per-unit allocations: ``applied(a)`` applies
    ``expand(a)`` (block units over reconstruction). ``fallback``: the inner pruning's, if any."""

    def __init__(self, inner: Pruning, expand: Callable[[Mapping[str, float]], dict[str, float]]) -> None:
        self.inner, self.expand, self.model = inner, expand, inner.model

    @property
    def fallback(self) -> dict[str, str]:
        return dict(getattr(self.inner, "fallback", {}))

    def applied(self, allocation: Mapping[str, float]) -> contextlib.AbstractContextManager[nn.Module]:
        return self.inner.applied(self.expand(allocation))


class ChannelUnits(ChannelPruning):
    """Coupled channel groups as :class:`Units` (``granularity="channel"``); see
    :class:`~prunescope.structured.pruning.ChannelPruning` for masking, removal and footprints."""

    granularity = "channel"
    unit_kind = "group"
    additive = False
    whole_levels = True

    @property
    def units(self) -> list[Unit]:
        return [Unit(g.name, g.kind, g.width, g.params, g.macs) for g in self.groups.groups.values()]

    @property
    def skipped(self) -> dict[str, str]:
        return self.groups.skipped

    @property
    def every(self) -> list[str]:
        return self.groups.every

    def expand(self, allocation: Mapping[str, float]) -> dict[str, float]:
        """The allocation itself: its units are the groups."""
        return dict(allocation)

    def removed_fraction(self, allocation: Mapping[str, float]) -> float:
        """The share of the whole model's parameters that removing the allocation's channels removes."""
        return 1 - self.footprint(allocation).params / self.footprint({}).params

    def latency_table(self, device: str | torch.device, batch_size: int) -> LatencyTable:
        return LatencyTable(self, device=device, batch_size=batch_size)

    def summary(self, allocation: Mapping[str, float]) -> dict:
        """The model pruned with ``allocation``: parameters, MACs per sample, their dense counts, the fraction of
        the dense MACs left, and the channels each group keeps (``round_to`` applied)."""
        dense, pruned = self.footprint({}), self.footprint(allocation)
        removal = self.removal(allocation)
        return {
            "params": pruned.params,
            "macs": pruned.macs,
            "dense_params": dense.params,
            "dense_macs": dense.macs,
            "macs_fraction": pruned.macs / dense.macs,
            "round_to": self.round_to,
            "kept_channels": {name: g.width - len(removal.get(name, ())) for name, g in self.groups.groups.items()},
        }


def _weight_units(
    model: nn.Module, data: Dataset, criterion: str, include: Sequence[str], exclude: Sequence[str], seed: int,
    round_to: int, names: Sequence[str] | None, unit_kind: str = "matrix",
) -> WeightPruning:
    if round_to != 1:
        raise UsageError("--round-to applies to channel scans: scan with --granularity channel")
    # Named units (a pick on a scan) are exactly those names; otherwise a language model's defaults apply.
    targets = (find_targets(model, include, exclude) if names is not None
               else chosen_targets(model, data.vocabulary, include, exclude)[0])
    if names is not None:
        wanted = set(names)
        unit_of = ({t.name: block for block, members in block_units(targets).items() for t in members}
                   if unit_kind == "block" else {t.name: t.name for t in targets})
        targets = [t for t in targets if unit_of[t.name] in wanted]
    scores = compute_scores(model, targets, criterion, data=data.train, seed=seed)
    kind = BlockUnits if unit_kind == "block" else WeightPruning
    return kind(model, targets, scores, data.input_shape)



def _channel_units(
    model: nn.Module, data: Dataset, importance: str, include: Sequence[str], exclude: Sequence[str], seed: int,
    round_to: int, names: Sequence[str] | None, unit_kind: str = "matrix",
) -> ChannelUnits:
    """Refuses a model where masking does not reproduce removal (see
    :func:`~prunescope.structured.pruning.masking_error`), since its curves would mislead."""
    if unit_kind != "matrix":
        raise UsageError("--units block groups weight matrices: it applies to --granularity weight")
    groups = find_groups(model, data.input_shape, include, exclude)
    if names is not None:
        groups = groups.select(names)
    check_round_to(groups, round_to)
    scores = group_scores(groups, importance, data=data.train, seed=seed)
    device = next(model.parameters()).device
    error = masking_error(groups, data.val.x[:MASKING_CHECK_BATCH].to(device), seed=seed)
    if error > MASKING_TOLERANCE:
        raise UsageError(
            f"masking channels of this model does not reproduce their removal (outputs differ by up to {error:.3g}): "
            "a layer outside Torch-Pruning's groups reads removed channels; --exclude the groups feeding it"
        )
    return ChannelUnits(groups, scores, round_to)


GRANULARITIES: dict[str, Callable[..., Units]] = {"weight": _weight_units, "channel": _channel_units}
DEFAULT_CRITERION = {"weight": "magnitude", "channel": "l2"}  # what ranks a unit's elements unless the user says
CRITERIA_OF = {"weight": tuple(CRITERIA), "channel": tuple(IMPORTANCES)}
UNIT_KINDS = ("matrix", "block")  # weight units: one weight tensor each, or one block of the network each


def criterion_for(granularity: str, criterion: str | None, option: str = "--criterion") -> str:
    """``criterion`` (None: the default) checked against what ranks elements at ``granularity``; one-line UsageError
    naming ``option``."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    chosen = DEFAULT_CRITERION[granularity] if criterion is None else criterion
    if chosen not in CRITERIA_OF[granularity]:
        kind = "weights" if granularity == "weight" else "channels"
        choices = ", ".join(CRITERIA_OF[granularity])
        raise UsageError(f"{option} {chosen!r} does not rank {kind}: use one of {choices}")
    return chosen


def find_units(
    model: nn.Module,
    data: Dataset,
    granularity: str,
    criterion: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    names: Sequence[str] | None = None,
    seed: int = 0,
    round_to: int = 1,
    units: str = "matrix",
) -> Units:
    """The units of ``model`` at ``granularity`` (``weight`` or ``channel``), scored by ``criterion``.

    include / exclude: shell-style globs on unit names (a glob matching nothing is an error);
    names: keep exactly these units (e.g. those a scan measured). Gradient criteria read
    ``data.train``; a channel model is checked on ``data.val`` to mask faithfully. round_to:
    channels kept in multiples of it (channel units only). units: ``matrix`` (a weight tensor per
    unit) or ``block`` (:class:`BlockUnits`: a block of the network per unit; ``names`` are then
    block names; weights only).
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    if units not in UNIT_KINDS:
        raise UsageError(f"unknown --units {units!r}: use one of {', '.join(UNIT_KINDS)}")
    return GRANULARITIES[granularity](model, data, criterion, include, exclude, seed, round_to, names, units)
