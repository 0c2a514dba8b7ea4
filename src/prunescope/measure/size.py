"""Parameters and bytes of a model as it computes (a pruned weight counted through ``weight_orig * weight_mask``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.measure.forward import MASK_SUFFIX, ORIG_SUFFIX, join_name


@dataclass(frozen=True)
class ParamCounts:
    """Parameter entries over the whole model (weights, biases, norm scales, everything).

    total: number of entries; nonzero: entries != 0 in the effective tensors.
    """

    total: int
    nonzero: int


@dataclass(frozen=True)
class SizeBytes:
    """Parameter storage in bytes.

    dense: every entry stored. sparse: an encoding estimate (see :func:`model_bytes`), not a file size.
    """

    dense: int
    sparse: int


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every parameter of ``model`` as the forward pass uses it.

    A parameter reparametrised by ``torch.nn.utils.prune`` (``<name>_orig`` with buffer
    ``<name>_mask``) is yielded once as ``(<name>, orig * mask)``; the mask itself is a buffer
    and never yielded. Tensors are detached; shared parameters appear once (first name).
    """
    for name, param in model.named_parameters():
        module_name, _, attr = name.rpartition(".")
        if attr.endswith(ORIG_SUFFIX):
            base = attr.removesuffix(ORIG_SUFFIX)
            mask = model.get_submodule(module_name)._buffers.get(base + MASK_SUFFIX)
            if mask is not None:
                # Recompute orig * mask rather than read module.<base>: that attribute is only
                # refreshed by the pruning pre-hook on the next forward, so it can be stale.
                yield join_name(module_name, base), param.detach() * mask
                continue
        yield name, param.detach()


def count_parameters(model: nn.Module) -> ParamCounts:
    """Count every parameter entry of ``model`` and how many are nonzero.

    All parameters count (weights, biases, normalisation scales and shifts); buffers such as
    BatchNorm running statistics or pruning masks do not. A pruned weight counts once, as its
    effective tensor ``orig * mask``.
    """
    total = nonzero = 0
    for _, tensor in effective_parameters(model):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return ParamCounts(total=total, nonzero=nonzero)


def model_bytes(model: nn.Module) -> SizeBytes:
    """Bytes needed to store the parameters, dense and with a sparse encoding.

    dense: sum over parameters of ``numel * element_size``.
    sparse: per parameter the smaller of its dense bytes and a bitmask encoding,
    ``nonzero * element_size + ceil(numel / 8)`` (the nonzero values plus one bit per position).
    This is an encoding estimate, not the size of any file prunescope writes.
    """
    dense = sparse = 0
    for _, tensor in effective_parameters(model):
        tensor_dense = tensor.numel() * tensor.element_size()
        bitmask = int(torch.count_nonzero(tensor)) * tensor.element_size() + (tensor.numel() + 7) // 8
        dense += tensor_dense
        sparse += min(tensor_dense, bitmask)
    return SizeBytes(dense=dense, sparse=sparse)
