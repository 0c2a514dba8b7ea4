"""Multiply-accumulates per sample, dense and effective: one counter over the ATen operators that run.

Each operator's MACs are charged to the weight it multiplies (found by storage: a parameter, a view of
one, or a pruned module's ``orig * mask``); products of two activations (attention's QK^T and AV) count
in full under ``"<module>.attention"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunescope.measure.forward import (
    MASK_SUFFIX,
    ORIG_SUFFIX,
    check_input_shape,
    eval_mode,
    example_input,
    forward,
    join_name,
    model_device,
)


@dataclass(frozen=True)
class MacCounts:
    """Multiply-accumulates for ONE input sample (see :func:`count_macs`).

    per_weight maps a weight name (``"fc1.weight"``, or a pseudo-key such as
    ``"attn.attention"`` for the attention matmuls) to ``(dense MACs, effective MACs)``.
    """

    dense: int
    effective: int
    per_weight: dict[str, tuple[int, int]]


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> MacCounts:
    """Multiply-accumulates of one forward pass on ONE sample of shape ``input_shape``.

    The one MAC counter of prunescope: ``pick``, ``prune``, ``measure`` and the reports all read
    it. It counts the ATen operators that run (:class:`torch.utils.flop_counter.FlopCounterMode`
    over a dry run on zeros of shape ``(1, *input_shape)``, model's device and floating dtype,
    eval mode, ``torch.inference_mode``; MACs = FLOPs / 2), so it sees every matrix product a
    model does, however it calls it, and it also measures a graph loaded from a torch.export
    file (:func:`prunescope.structured.export.load_exported`), which has no layers to hook.

    Counted: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``; not bias additions),
    convolutions (grouped and transposed too), attention kernels, and fused kernels
    FlopCounterMode has no formula for: recurrent layers (LSTM on CPU, ``mkldnn_rnn_layer``;
    any RNN on cuDNN, ``_cudnn_rnn``) at ``weight.numel()`` MACs per weight matrix per time
    step, and CPU attention. Not counted: elementwise operators, normalisation, pooling,
    embeddings, and any other operator without a formula.

    MACs are attributed to the weight an operator multiplies (an operand that is a parameter,
    a view of one, or a pruned module's effective weight ``orig * mask``), keyed by its name:
    ``"fc1.weight"``, ``"attn.in_proj_weight"``, ``"attn.out_proj.weight"``,
    ``"rnn.weight_hh_l0"``. A product of two activations (QK^T and AV of attention) goes to
    ``"<module>.attention"``, the innermost module it ran in. Effective MACs of a weight are its
    dense MACs times ``nonzero / numel`` of the operand as it was multiplied: what a kernel that
    skips zero weights (unstructured sparsity) would do; activation products count in full.

    Raises UsageError if ``input_shape`` is invalid or the model cannot run on it.
    """
    check_input_shape(input_shape)
    counter = _AttributingCounter(model)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # The fused MultiheadAttention / TransformerEncoderLayer inference kernel has no formula;
        # the unfused path computes the same thing through counted projections and attention.
        torch.backends.mha.set_fastpath_enabled(False)
        with eval_mode(model), torch.inference_mode(), counter:
            forward(model, example_input(model, 1, input_shape, model_device(model), torch.zeros), input_shape)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts = counter.per_weight
    return MacCounts(
        dense=sum(dense for dense, _ in counts.values()),
        effective=sum(effective for _, effective in counts.values()),
        per_weight=counts,
    )


_ACTIVATION_PRODUCTS = "attention"  # key suffix for products of two activations (QK^T, AV)


class _AttributingCounter(FlopCounterMode):
    """FlopCounterMode that also charges each counted operator to the weight it multiplies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(display=False, custom_mapping=_FUSED_KERNEL_FLOPS)
        self.model = model
        # Storage of every parameter -> its name (shared parameters: first name, as named_parameters).
        self.parameters = {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters()}
        # Pruned tensors (<name>_orig + <name>_mask): the effective weight is rebuilt at each forward.
        self.pruned = [
            (module_name, attr.removesuffix(ORIG_SUFFIX))
            for module_name, module in model.named_modules()
            for attr in module._parameters
            if attr.endswith(ORIG_SUFFIX) and attr.removesuffix(ORIG_SUFFIX) + MASK_SUFFIX in module._buffers
        ]
        self.per_weight: dict[str, tuple[int, int]] = {}

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            macs = self.flop_registry[func_packet](*args, **kwargs, out_val=out) // 2
            self._charge(func_packet, macs, args)
        return super()._count_flops(func_packet, out, args, kwargs)

    def _charge(self, func_packet: Any, macs: int, args: Any) -> None:
        names = self._weight_names()
        operands = [
            (names[ptr], tensor)
            for tensor in torch.utils._pytree.tree_leaves(args)
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2
            and (ptr := tensor.untyped_storage().data_ptr()) in names
        ]
        if not operands:
            self._add(f"{self._innermost_module()}{_ACTIVATION_PRODUCTS}", macs, macs)
            return
        # A fused recurrent kernel multiplies several weight matrices, each once per time step:
        # its MACs split by size. An ordinary product has one weight operand.
        total = sum(tensor.numel() for _, tensor in operands)
        for name, tensor in operands:
            dense = macs * tensor.numel() // total
            self._add(name, dense, dense * int(torch.count_nonzero(tensor)) // tensor.numel())

    def _weight_names(self) -> dict[int, str]:
        names = dict(self.parameters)
        for module_name, attr in self.pruned:  # read now: the forward pre-hook has just rebuilt it
            tensor = getattr(self.model.get_submodule(module_name), attr)
            names[tensor.untyped_storage().data_ptr()] = join_name(module_name, attr)
        return names

    def _innermost_module(self) -> str:
        """``"<name>."`` of the innermost module running now ("" at the root)."""
        # ModuleTracker names a module by its path from the root, the root's class name first.
        path = max(self.mod_tracker.parents, key=lambda name: name.count("."))
        _, _, inside_root = path.partition(".")
        return f"{inside_root}." if inside_root else ""

    def _add(self, key: str, dense: int, effective: int) -> None:
        old_dense, old_effective = self.per_weight.get(key, (0, 0))
        self.per_weight[key] = (old_dense + dense, old_effective + effective)


def _recurrent_flops(input_shape: torch.Size, weight_shapes: list[torch.Size]) -> int:
    """FLOPs of a fused recurrent kernel: every weight matrix (2-D) once per time step of every sequence."""
    steps = math.prod(input_shape[:-1])  # (L, N, in), (N, L, in), or packed (sum of lengths, in)
    return 2 * steps * sum(math.prod(shape) for shape in weight_shapes if len(shape) == 2)


def _mkldnn_rnn_layer_flops(input: torch.Size, weight0: torch.Size, weight1: torch.Size, *_: Any, **__: Any) -> int:
    """``aten.mkldnn_rnn_layer`` (an LSTM layer and direction on CPU): weight0 is W_ih, weight1 W_hh."""
    return _recurrent_flops(input, [weight0, weight1])


def _cudnn_rnn_flops(input: torch.Size, weight: list[torch.Size], *_: Any, **__: Any) -> int:
    """``aten._cudnn_rnn`` (a whole RNN/LSTM/GRU on CUDA): ``weight`` lists every layer's and direction's tensors."""
    # Written from the operator's schema; unlike the CPU formulas, not yet checked against count_macs on a GPU.
    return _recurrent_flops(input, weight)


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *_: Any, **__: Any) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``: QK^T and AV, as FlopCounterMode counts CUDA attention."""
    return 2 * math.prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


# FlopCounterMode formulas (called with tensor shapes) for fused kernels torch 2.13 leaves uncounted.
_FUSED_KERNEL_FLOPS = {
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._cudnn_rnn: _cudnn_rnn_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
}
