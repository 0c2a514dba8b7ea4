"""Coupled channel groups, the units of structured pruning, found by Torch-Pruning's dependency graph.

A group is every slice that must go when channels of one layer go: a conv's output
channels, the BatchNorm after it, the input channels of every layer that reads them and,
through residual additions and concatenations, the output channels of the other layers
feeding the same tensor. Torch-Pruning (Fang et al., "DepGraph", CVPR 2023) finds them by
tracing the autograd graph. A group is named after its root layer (the first of its layers
Torch-Pruning meets) and its sparsity is the fraction of the root's output channels removed.

Removal is given as ``{group name: root channel indices}`` (a :data:`Removal`). The same
removal can be applied two ways, and they compute the same function:

- :meth:`ChannelGroups.masked` zeroes every member's slice in place and restores it exactly
  (what a scan evaluates); a removed channel then reaches no layer outside its group.
- :meth:`ChannelGroups.prune` removes the slices physically (Torch-Pruning's surgery).

Layers whose channels cannot be removed are listed in :attr:`ChannelGroups.skipped` with
the reason, and left dense: the model's output layers, layers the trace does not reach,
attention, recurrent layers other than single-layer unidirectional LSTMs, and groups with a
member whose slices prunescope cannot mask faithfully (LayerNorm, GroupNorm, grouped conv).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.conv import _ConvNd

from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.structured.slices import Index, along_channel_dim, member_slices

Removal = Mapping[str, Sequence[int]]  # group name -> root channel indices to remove


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled channel group.

    name: the root layer's module path. kind: ``conv``, ``linear`` or ``recurrent`` (the root's).
    width: the root's output channels. members: ``"module (out)"`` / ``"module (in)"`` of every
    layer with parameters the group touches. params: parameters in the group's slices (all
    ``width`` channels). macs: dense MACs per sample of the weights in those slices.
    """

    name: str
    kind: str
    width: int
    members: tuple[str, ...]
    params: int
    macs: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "width": self.width,
            "members": list(self.members),
            "params": self.params,
            "macs": self.macs,
        }


@dataclass(frozen=True)
class _Member:
    """One layer of a group: its path, whether its output (else input) channels, and per index the root channel."""

    path: str
    module: nn.Module
    out: bool
    idxs: torch.Tensor  # (k,) the member's channel indices
    roots: torch.Tensor  # (k,) the root channel each index follows (several for a flatten)


@dataclass(frozen=True)
class Footprint:
    """Parameters (all of them, biases and norms included) and dense MACs per sample of a model."""

    params: int
    macs: int


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, _ConvNd) else "recurrent" if isinstance(module, nn.RNNBase) else "linear"


class ChannelGroups:
    """The channel groups of one model, with masking, exact footprints and physical removal.

    Built by :func:`find_groups`. ``groups`` maps group name to :class:`ChannelGroup` in
    model order; ``skipped`` maps each layer left dense to the reason; ``every`` names every
    group of the model, before ``include`` / ``exclude``.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        graph: tp.DependencyGraph,
        roots: dict[str, nn.Module],
        skipped: dict[str, str],
        every: list[str] | None = None,
    ) -> None:
        self.model = model
        self.input_shape = input_shape
        self.skipped = skipped
        self.every = list(roots) if every is None else every
        self._graph = graph
        self._roots = roots
        self._names = {module: name for name, module in model.named_modules()}
        macs = count_macs(model, input_shape)
        # MACs per weight entry. The rest of the dense count (products of two activations, such as
        # attention's QK^T and AV) no group changes: a MultiheadAttention's embedding is never pruned.
        self._uses = {
            name: dense / tensor.numel()
            for name, (dense, _) in macs.per_weight.items()
            if (tensor := _parameters(model).get(name)) is not None
        }
        self._dense_macs = macs.dense
        self._spent = False
        # Per group, every member with parameters and, per member index, the root channel it follows:
        # traced once here, so that masking and footprints need no graph walk.
        self._members_of: dict[str, list[_Member]] = {}
        self.groups: dict[str, ChannelGroup] = {}
        for name, root in roots.items():
            width = self._pruner(root).get_out_channels(root)
            self._members_of[name] = list(self._trace_members(name, width))
            entries = self.removed_entries({name: range(width)})
            self.groups[name] = ChannelGroup(
                name,
                _kind(root),
                width,
                tuple(self._members(name)),
                sum(int(e.sum()) for e in entries.values()),
                self._macs(entries),
            )

    def select(self, names: Sequence[str]) -> ChannelGroups:
        """These groups restricted to ``names`` (e.g. the groups a scan measured), from the same trace."""
        unknown = [name for name in names if name not in self._roots]
        if unknown:
            raise UsageError(f"unknown channel group {unknown[0]!r}; groups: {', '.join(self._roots)}")
        chosen = {name: root for name, root in self._roots.items() if name in set(names)}
        return ChannelGroups(self.model, self.input_shape, self._graph, chosen, self.skipped, self.every)

    # ------------------------------------------------------------------ reading

    def _pruner(self, module: nn.Module) -> tp.pruner.BasePruningFunc:
        return self._graph.get_pruner_of_module(module)

    def tp_group(self, name: str, idxs: Sequence[int]) -> tp.dependency.Group:
        if self._spent:
            raise RuntimeError("these channel groups belong to a model that has been pruned: find them again")
        if name not in self._roots:
            raise UsageError(f"unknown channel group {name!r}; groups: {', '.join(self._roots)}")
        root = self._roots[name]
        width = self._pruner(root).get_out_channels(root)
        chosen = sorted({int(i) for i in idxs})
        if chosen and not (chosen[0] >= 0 and chosen[-1] < width):
            raise UsageError(f"channel index out of range for group {name!r} of width {width}")
        return self._graph.get_pruning_group(root, self._pruner(root).prune_out_channels, chosen)

    def _trace_members(self, name: str, width: int) -> Iterator[_Member]:
        for item in self.tp_group(name, range(width)).items:
            module = item.dep.target.module
            if isinstance(module, nn.Parameter) and module in self._graph._param_to_name:
                # A parameter used outside a layer (a learned scale): its one non-singleton dimension is the channel.
                indices = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
                yield _Member(self._graph._param_to_name[module], module, True, indices,
                              torch.tensor([int(i) for i in item.root_idxs], dtype=torch.long))
                continue
            if not isinstance(module, nn.Module) or module not in self._names:
                continue  # a Torch-Pruning op node (add, concat, reshape): no parameters
            handler = item.dep.handler.__name__
            yield _Member(
                self._names[module], module, handler.startswith("prune_out") or "depthwise" in handler,
                torch.tensor([int(i) for i in item.idxs], dtype=torch.long),
                torch.tensor([int(i) for i in item.root_idxs], dtype=torch.long),
            )

    def _slices(self, name: str, idxs: Sequence[int]) -> Iterator[tuple[str, tuple[Index, ...]]]:
        if self._spent:
            raise RuntimeError("these channel groups belong to a model that has been pruned: find them again")
        if name not in self._members_of:
            raise UsageError(f"unknown channel group {name!r}; groups: {', '.join(self._roots)}")
        removed = torch.tensor(sorted({int(i) for i in idxs}), dtype=torch.long)
        width = self.groups[name].width if name in self.groups else len(removed)
        if len(removed) and not (removed[0] >= 0 and removed[-1] < width):
            raise UsageError(f"channel index out of range for group {name!r} of width {width}")
        for member in self._members_of[name]:
            index = torch.sort(member.idxs[torch.isin(member.roots, removed)]).values
            if isinstance(member.module, nn.Parameter):
                yield member.path, along_channel_dim(member.module, index)
                continue
            for param, where in member_slices(member.module, member.out, index):
                yield f"{member.path}.{param}" if member.path else param, where

    def _members(self, name: str) -> list[str]:
        """``"module (out)"`` / ``"module (in)"`` of every member with parameters, in Torch-Pruning's order."""
        labels = [
            f"{member.path} (parameter)" if isinstance(member.module, nn.Parameter)
            else f"{member.path} ({'out' if member.out else 'in'})"
            for member in self._members_of[name]
            if isinstance(member.module, nn.Parameter) or any(True for _ in member.module.parameters(recurse=False))
        ]
        return list(dict.fromkeys(labels))

    def check(self, removal: Removal) -> None:
        """UsageError unless ``removal`` names known groups and leaves every group a channel."""
        for name, idxs in removal.items():
            if name not in self.groups:
                raise UsageError(f"unknown channel group {name!r}; groups: {', '.join(self.groups)}")
            if len({int(i) for i in idxs}) >= self.groups[name].width:
                raise UsageError(
                    f"removing all {self.groups[name].width} channels of group {name!r} "
                    "would disconnect the network: keep at least one"
                )

    def removed_entries(self, removal: Removal) -> dict[str, torch.Tensor]:
        """``{parameter path: bool tensor, True where an entry is removed}`` for ``removal``."""
        params = _parameters(self.model)
        entries: dict[str, torch.Tensor] = {}
        for name, idxs in removal.items():
            if len(idxs) == 0:
                continue
            for path, where in self._slices(name, idxs):
                if path not in entries:
                    entries[path] = torch.zeros_like(params[path], dtype=torch.bool)
                entries[path][where] = True
        return entries

    def _macs(self, entries: Mapping[str, torch.Tensor]) -> int:
        return round(sum(self._uses.get(path, 0.0) * int(e.sum()) for path, e in entries.items()))

    def footprint(self, removal: Removal | None = None) -> Footprint:
        """Exact parameters and MACs per sample of the model once ``removal`` is removed.

        Counted as the entries masking leaves, which are exactly those physical removal
        keeps: a layer losing output set O and input set I keeps ``(out - |O|)·(in - |I|)``
        weights, the entries outside the union of both slices.
        """
        self.check(removal or {})
        entries = self.removed_entries(removal or {})
        total = sum(p.numel() for p in self.model.parameters())
        return Footprint(total - sum(int(e.sum()) for e in entries.values()), self._dense_macs - self._macs(entries))

    # ------------------------------------------------------------------ applying

    @contextlib.contextmanager
    def masked(self, removal: Removal) -> Iterator[nn.Module]:
        """Zero every slice of ``removal`` in place for the block; restore the values bit-exactly after."""
        self.check(removal)
        entries = self.removed_entries(removal)
        params = _parameters(self.model)
        saved = {path: params[path].detach().clone() for path in entries}
        try:
            with torch.no_grad():
                for path, where in entries.items():
                    params[path].masked_fill_(where, 0)
            yield self.model
        finally:
            with torch.no_grad():
                for path, original in saved.items():
                    params[path].copy_(original)

    def prune(self, removal: Removal) -> nn.Module:
        """Remove ``removal``'s channels physically, in place; the model is returned.

        These groups describe the model before removal: find them again to go on.
        """
        self.check(removal)
        for name, idxs in removal.items():
            if len(idxs):
                self.tp_group(name, idxs).prune()
        self._spent = True
        for module in self.model.modules():
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()
        return self.model


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def pruned_spec(spec: dict, groups: ChannelGroups, removal: Removal) -> dict:
    """``spec`` of the model ``groups`` describes, once ``removal`` is removed from it.

    The spec records the removed channels as indices of the DENSE model's groups
    (``"removed_channels"``), so that :func:`rebuild` rebuilds the
    pruned architecture; removing channels from an already pruned model composes.
    """
    removed = {name: list(idxs) for name, idxs in spec.get("removed_channels", {}).items()}
    for name, idxs in removal.items():
        if not len(idxs):
            continue
        before = set(removed.get(name, []))
        kept = [i for i in range(groups.groups[name].width + len(before)) if i not in before]
        removed[name] = sorted(before | {kept[int(i)] for i in idxs})
    return {**spec, "removed_channels": removed}
