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
import copy
import fnmatch
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_from_spec

Removal = Mapping[str, Sequence[int]]  # group name -> root channel indices to remove
Index = int | slice | torch.Tensor | tuple

# Layers that mix channels: a removed channel stops at them (they are the group's consumers).
_MIXERS = (nn.Linear, _ConvNd, nn.RNNBase, nn.MultiheadAttention, nn.Embedding)


class LSTMHiddenPruner(tp.pruner.BasePruningFunc):
    """Hidden units of a single-layer unidirectional ``nn.LSTM`` for Torch-Pruning.

    Torch-Pruning 1.6's own LSTM pruner slices the gate matrices along the wrong dimensions;
    this one removes, per hidden unit ``j``, rows ``j + g·hidden`` (g = the 4 gates) of
    ``weight_ih_l0``, ``weight_hh_l0`` and both biases, and column ``j`` of ``weight_hh_l0``.
    Input channels are columns of ``weight_ih_l0`` (and ``_reverse``).
    """

    TARGET_MODULES = nn.LSTM

    def prune_out_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.LSTM:
        keep = _kept(layer.hidden_size, idxs)
        for name, index in _lstm_hidden_slices(layer, keep):
            dim = 0 if index[0] is not _ALL else 1
            chosen = index[dim]
            setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), chosen.tolist(), dim))
        layer.hidden_size = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.LSTM:
        keep = _kept(layer.input_size, idxs).tolist()
        for name in _lstm_input_weights(layer):
            setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 1))
        layer.input_size = len(keep)
        return layer

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.LSTM) -> int:
        return layer.input_size


class _RecurrentLeaf(tp.pruner.BasePruningFunc):
    """Makes Torch-Pruning see a GRU / RNN as one layer, so that it is skipped with its reason.

    Unregistered, their CPU kernels are traced op by op as element-wise ops, which couples the
    layer feeding them with the layer after them. Never called to prune.
    """

    TARGET_MODULES = nn.RNNBase

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError(f"{type(layer).__name__} hidden units are not pruned structurally")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError(f"{type(layer).__name__} inputs are not pruned structurally")

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


_ALL = slice(None)


def _kept(size: int, removed: Sequence[int]) -> torch.Tensor:
    gone = set(int(i) for i in removed)
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _gate_rows(units: torch.Tensor, hidden: int) -> torch.Tensor:
    """Rows of ``units`` in each of the 4 stacked gates (i, f, g, o)."""
    return torch.cat([units + gate * hidden for gate in range(4)])


def _lstm_hidden_slices(layer: nn.LSTM, units: torch.Tensor) -> list[tuple[str, tuple[Index, ...]]]:
    rows = _gate_rows(units, layer.hidden_size)
    slices: list[tuple[str, tuple[Index, ...]]] = [("weight_ih_l0", (rows, _ALL)), ("weight_hh_l0", (rows, _ALL))]
    if layer.bias:
        slices += [("bias_ih_l0", (rows,)), ("bias_hh_l0", (rows,))]
    slices.append(("weight_hh_l0", (_ALL, units)))
    return slices


def _lstm_input_weights(layer: nn.LSTM) -> list[str]:
    return ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if layer.bidirectional else [])


def _structured_lstm(module: nn.Module) -> bool:
    return isinstance(module, nn.LSTM) and module.num_layers == 1 and not module.bidirectional and module.proj_size == 0


def _along_channel_dim(param: nn.Parameter, idxs: torch.Tensor) -> tuple[Index, ...]:
    """The entries of ``param`` (one non-singleton dimension) at channels ``idxs``."""
    dim = max(d for d, size in enumerate(param.shape) if size > 1)
    return (*([_ALL] * dim), idxs)


def member_slices(module: nn.Module, out: bool, idxs: torch.Tensor) -> list[tuple[str, tuple[Index, ...]]]:
    """``(parameter name, index)`` of every entry that removing channels ``idxs`` of ``module`` removes.

    ``out``: the module's output channels (else its input channels). Raises ValueError for a
    module whose slices are not known here (the group is then left dense).
    """
    if isinstance(module, nn.Linear):
        return (
            [("weight", (idxs, _ALL)), *([("bias", (idxs,))] if module.bias is not None else [])]
            if out
            else [("weight", (_ALL, idxs))]
        )
    if isinstance(module, _ConvNd):
        bias = [("bias", (idxs,))] if module.bias is not None else []
        if module.groups > 1:
            if module.groups == module.in_channels == module.out_channels:  # depthwise: in and out are one channel
                return [("weight", (idxs,)), *bias]
            raise ValueError("grouped convolution")
        out_dim = 1 if module.transposed else 0
        if out:
            return [("weight", (_ALL, idxs) if out_dim else (idxs,)), *bias]
        return [("weight", (idxs,) if out_dim else (_ALL, idxs))]
    if isinstance(module, _BatchNorm):
        return [("weight", (idxs,)), ("bias", (idxs,))] if module.affine else []
    if isinstance(module, nn.LSTM):
        if out:
            if not _structured_lstm(module):
                raise ValueError("only single-layer unidirectional LSTMs have removable hidden units")
            return _lstm_hidden_slices(module, idxs)
        return [(name, (_ALL, idxs)) for name in _lstm_input_weights(module)]
    if isinstance(module, nn.Embedding) and out:
        return [("weight", (_ALL, idxs))]
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        return [("weight", (idxs,))]
    if any(True for _ in module.parameters(recurse=False)):
        raise ValueError(f"{type(module).__name__} slices cannot be masked faithfully")
    return []  # a parameter-free op (ReLU, pooling, add, concat, reshape) carries the channels on


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
                yield member.path, _along_channel_dim(member.module, index)
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


@contextlib.contextmanager
def _naming_failures(model: nn.Module) -> Iterator[None]:
    """Turn a tracing failure into a UsageError naming the innermost layer that was running."""
    running: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def enter(module: nn.Module, _: object) -> None:
        running.append(names[module] or type(module).__name__)

    def leave(_module: nn.Module, _inputs: object, _output: object) -> None:
        running.pop()

    handles = [
        hook(callback)
        for module in model.modules()
        for hook, callback in ((module.register_forward_pre_hook, enter), (module.register_forward_hook, leave))
    ]
    try:
        yield
    except UsageError:
        raise
    except Exception as error:  # Torch-Pruning raises anything from assertions to KeyErrors
        where = f"in layer {running[-1]!r}" if running else "after the forward pass"
        raise UsageError(
            f"Torch-Pruning cannot trace the model {where}: {type(error).__name__}: {error}; "
            "structured pruning needs a forward pass autograd can follow (no in-place tricks on "
            "weights, no torch.no_grad inside forward)"
        ) from error
    finally:
        for handle in handles:
            handle.remove()


def _output_layers(graph: tp.DependencyGraph) -> set[nn.Module]:
    """Channel-mixing layers whose output channels reach the model's output without another mixer."""
    outputs = set()
    for module, node in graph.module2node.items():
        if not isinstance(module, _MIXERS):
            continue
        frontier, seen = list(node.outputs), set()
        if not frontier:
            outputs.add(module)
        while frontier:
            current = frontier.pop()
            if id(current) in seen or isinstance(current.module, _MIXERS):
                continue
            seen.add(id(current))
            if not current.outputs:
                outputs.add(module)
                break
            frontier.extend(current.outputs)
    return outputs


def _unsupported_root(module: nn.Module) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        return "attention: embedding dimensions are not pruned structurally"
    if isinstance(module, nn.RNNBase) and not _structured_lstm(module):
        return "recurrent layer: only single-layer unidirectional LSTMs have removable hidden units"
    if (
        isinstance(module, _ConvNd)
        and module.groups > 1
        and not module.groups == module.in_channels == module.out_channels
    ):
        return "grouped convolution"
    return None


def _all_groups(
    graph: tp.DependencyGraph, ignored: list[nn.Module], names: dict[nn.Module, str], skipped: dict[str, str]
) -> Iterator[tp.dependency.Group]:
    """Torch-Pruning's ``get_all_groups`` over the mixers (each layer's output channels in one group).

    Unlike it, groups coupled with an ``ignored`` layer are yielded too (it drops them silently,
    their layers then in no group and not in ``skipped``), and a root whose group Torch-Pruning
    fails to build (its index mappings break inside a GRU traced op by op) goes to ``skipped``.
    """
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if not isinstance(module, _MIXERS) or module in visited or module in ignored:
            continue
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except Exception as error:  # Torch-Pruning raises anything from IndexErrors to assertions
            skipped[names[module]] = f"Torch-Pruning cannot follow its channels ({type(error).__name__}: {error})"
            continue
        visited.update(dep.target.module for dep, _ in group.items if graph.is_out_channel_pruning_fn(dep.handler))
        yield group


def find_groups(
    model: nn.Module, input_shape: Sequence[int], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ChannelGroups:
    """The coupled channel groups of ``model`` for inputs of shape ``input_shape`` (one sample, no batch).

    ``include`` / ``exclude``: shell-style globs on group names, as for weight targets; a glob
    matching no group is an error. The model is traced once on zeros, in eval mode.
    """
    shape = tuple(int(d) for d in input_shape)
    device = next(model.parameters()).device
    example = torch.zeros((2, *shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with _naming_failures(model), torch.enable_grad(), warnings.catch_warnings():
            # Torch-Pruning warns of every parameter used outside a layer ("Unwrapped parameters") and
            # of concatenations it cannot size ("Maximum recursive depth"): groups meeting either are
            # judged below (refused, with the reason, when the channel dimension is a guess, or when
            # the group's removal breaks the forward pass), so its warnings would only repeat them.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message="Maximum recursive depth")
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                forward_fn=lambda m, x: m(x),
                customized_pruners={nn.LSTM: LSTMHiddenPruner(), nn.GRU: _RecurrentLeaf(), nn.RNN: _RecurrentLeaf()},
            )
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, _MIXERS) and module not in graph.module2node:
            skipped[name] = "not reached by the trace (used outside forward, or under torch.no_grad)"
    outputs = _output_layers(graph)
    for module in outputs:
        skipped[names[module]] = "output layer: its channels are the model's outputs"
    ignored = list(outputs)
    for module in graph.module2node:
        if isinstance(module, nn.Module) and (reason := _unsupported_root(module)) is not None:
            skipped[names[module]] = reason
            ignored.append(module)
    roots: dict[str, nn.Module] = {}
    for group in _all_groups(graph, ignored, names, skipped):
        root = group[0].dep.target.module
        name = names[root]
        # Output channels of every layer in the group: all left dense if the group is.
        producers = [
            dep.target.module
            for dep, _ in group.items
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, _MIXERS)
        ]
        # e.g. coupled to an output layer: removing these channels would change the output
        why = next((f"coupled with {names[m]!r}: {skipped[names[m]]}" for m in producers if m in ignored), None)
        guessed = [graph._param_to_name[p] for dep, _ in group.items if isinstance(p := dep.target.module, nn.Parameter)
                   and p in graph._param_to_name and sum(d > 1 for d in p.shape) > 1]
        if why is None and guessed:
            why = (f"meets {guessed[0]!r}, a parameter used outside a layer, whose channel dimension cannot be "
                   "told from the graph")
        if why is None:
            try:
                for dep, _idxs in group.items:
                    if isinstance(dep.target.module, nn.Module) and dep.target.module in names:
                        out = dep.handler.__name__.startswith("prune_out")
                        member_slices(dep.target.module, out, torch.tensor([0]))
            except ValueError as error:
                why = f"coupled with {names[dep.target.module]!r}: {error}"
        if why is not None:
            for module in producers:
                skipped.setdefault(names[module], why)
            continue
        roots[name] = root
    order = {name: i for i, name in enumerate(names.values())}
    ordered = dict(sorted(roots.items(), key=lambda item: order[item[0]]))
    roots = _select(ordered, include, exclude)
    if not roots:
        raise UsageError(
            "the model has no removable channel groups" + "".join(f"; {name}: {why}" for name, why in skipped.items())
        )
    return ChannelGroups(model, shape, graph, roots, dict(sorted(skipped.items())), list(ordered))


def _select(roots: dict[str, nn.Module], include: Sequence[str], exclude: Sequence[str]) -> dict[str, nn.Module]:
    available = ", ".join(roots)
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in roots):
                raise UsageError(f"{option} {pattern!r} matches no channel group; groups: {available}")
    return {
        name: root
        for name, root in roots.items()
        if (not include or any(fnmatch.fnmatchcase(name, p) for p in include))
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }


def pruned_copy(model: nn.Module, input_shape: Sequence[int], removal: Removal) -> nn.Module:
    """A physically pruned deep copy of ``model`` (``model`` itself is untouched)."""
    twin = copy.deepcopy(model)
    return find_groups(twin, input_shape).prune(removal)


def rebuild(spec: dict) -> nn.Module:
    """The model a :func:`prunescope.models.model_spec` dict describes, dense or structurally pruned.

    A spec with ``"removed_channels"`` (see :func:`pruned_spec`) describes a structurally
    pruned model: the dense model is built, those channels are removed, and every layer is
    initialised afresh for its new shape (so that a scratch baseline starts from a proper
    initialisation; a checkpoint's state dict replaces it).
    """
    removal = spec.get("removed_channels")
    model = build_from_spec({key: value for key, value in spec.items() if key != "removed_channels"})
    if removal:
        find_groups(model, spec["input_shape"]).prune(removal)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


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
