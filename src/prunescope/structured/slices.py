"""Which slices of a layer's parameters are its channels: the rows or columns a channel group masks or removes.

Most layers keep a channel along one dimension of each parameter; a single-layer LSTM keeps a hidden unit
in four gate rows and one recurrent column, which Torch-Pruning does not know: :class:`LSTMHiddenPruner`
teaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

Index = int | slice | torch.Tensor | tuple


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


def structured_lstm(module: nn.Module) -> bool:
    return isinstance(module, nn.LSTM) and module.num_layers == 1 and not module.bidirectional and module.proj_size == 0


def along_channel_dim(param: nn.Parameter, idxs: torch.Tensor) -> tuple[Index, ...]:
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
            if not structured_lstm(module):
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


class RecurrentLeaf(tp.pruner.BasePruningFunc):
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
