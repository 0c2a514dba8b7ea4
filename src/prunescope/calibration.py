"""What a layer sees: its inputs on calibration data, as the rows a weight matrix multiplies.

Calibration-aware pruning (Wanda's feature norms, OBS reconstruction's Hessians) needs,
for a weight viewed as (d_out, d_in) (:meth:`prunescope.targets.Target.matrix`), the matrix ``X`` of
shape (M, d_in) whose rows are the input vectors it is applied to: the last dimension of the input
of a Linear or another matrix layer (a Hugging Face ``Conv1D``: ``x @ W + b``), the im2col patches
(in-channel, kh, kw) of a convolution, or, inside ``nn.MultiheadAttention``, the query (and
key and value) of the projections and the attention's per-head context of ``out_proj``.
This module captures them with a forward pre-hook, stops the forward pass right after the
layer (the rest of the network is not needed), and streams them batch by batch so that
memory stays at one batch of one layer.

``out_proj`` is applied functionally by its attention module, so no hook of its own ever
fires: its input is the attention's output computed with ``out_proj`` set to the identity
(exact in floating point), from the attention module's own call. A recurrent layer's gate
matrices multiply its own hidden states, which pruning the layer changes, and an embedding
is a table lookup: neither has inputs to capture (:func:`unsupported` says why).

Only train examples serve as calibration data (never val or test), and no label is read.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.targets import Target, forward_owner, forward_with_pre_hooks, matrix_orientation

# The argument of nn.MultiheadAttention's call that each of its projection weights multiplies.
_ATTENTION_INPUTS = {"in_proj_weight": "query", "q_proj_weight": "query", "k_proj_weight": "key",
                     "v_proj_weight": "value"}


class _Captured(Exception):
    """Raised by the capture hook to end a forward pass once the layer's input is taken."""


def supports(module: nn.Module, param: str = "weight") -> str | None:
    """``None`` when the inputs of ``module``'s tensor ``param`` can be captured, else the reason why not.

    The packed ``in_proj_weight`` of an attention is captured only where it attends to itself
    (query, key and value equal), which :func:`unsupported` checks on an example.
    """
    if isinstance(module, nn.MultiheadAttention) and param in _ATTENTION_INPUTS:
        return None
    if isinstance(module, nn.RNNBase):
        return (f"a recurrent gate matrix ({param} of a {type(module).__name__}): the layer's outputs feed back into "
                "its gates, so what its gate matrices see depends on their own pruning")
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "an embedding (a table lookup, not a product with inputs)"
    if param != "weight":
        return f"the tensor {param} of a {type(module).__name__}"
    if matrix_orientation(module) is not None:  # Linear, HF Conv1D, registered matrix layers
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            return f"a grouped convolution (groups={module.groups})"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"a convolution with padding {module.padding!r} / mode {module.padding_mode!r}"
        return None
    return (f"a {type(module).__name__} (only matrix layers (Linear, Conv1D), ungrouped Conv1d/Conv2d and attention "
            "projection inputs are captured)")


def unsupported(model: nn.Module, targets: Sequence[Target], example: torch.Tensor) -> dict[str, str]:
    """``{target name: why its inputs cannot be captured}`` for the targets of ``model`` that cannot be.

    ``example``: a batch of inputs, run once when a packed attention projection must be
    checked for attending to itself.
    """
    reasons = {t.name: r for t in targets if (r := supports(model.get_submodule(t.module), t.param)) is not None}
    packed = {t.module for t in targets if t.param == "in_proj_weight" and t.name not in reasons}
    if packed:
        crossed = _cross_attention(model, packed, example)
        reasons |= {t.name: "the packed in_proj_weight of a cross-attention (its query, key and value rows multiply "
                            "different inputs)" for t in targets if t.param == "in_proj_weight" and t.module in crossed}
    return reasons


def refuse(targets: Sequence[Target], reasons: Mapping[str, str], remedy: str) -> None:
    """Raise a one-line UsageError naming the first target of ``reasons`` (:func:`unsupported`), if any;
    ``remedy``: what else the user can do (besides excluding it)."""
    for name, reason in reasons.items():
        module = next(t.module for t in targets if t.name == name)
        raise UsageError(f"cannot capture the inputs of {name}: it is {reason}; exclude it (--exclude "
                         f"{module or name!r}) or {remedy}")


def check_supported(model: nn.Module, targets: Sequence[Target], example: torch.Tensor, remedy: str) -> None:
    """:func:`refuse` the targets whose inputs cannot be captured."""
    refuse(targets, unsupported(model, targets, example), remedy)


def _attention_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    return inspect.signature(module.forward).bind(*args, **kwargs).arguments


def _attends_to_itself(arguments: dict[str, Any]) -> bool:
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    return all(other is query or (other.shape == query.shape and torch.equal(other, query)) for other in (key, value))


def _cross_attention(model: nn.Module, modules: set[str], example: torch.Tensor) -> set[str]:
    """The attention modules among ``modules`` whose first call on ``example`` is not self-attention."""
    crossed: set[str] = set()
    seen: set[str] = set()

    def record(path: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if path not in seen:
                seen.add(path)
                if not _attends_to_itself(_attention_arguments(module, args, kwargs)):
                    crossed.add(path)

        return hook

    forward_with_pre_hooks(model, example, {p: record(p) for p in modules}, with_kwargs=True)
    return crossed


def as_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The input vectors (M, d_in) that ``module``'s weight, viewed as (d_out, d_in), multiplies."""
    if (transposed := matrix_orientation(module)) is not None:  # x @ Wᵀ, or x @ W for a weight stored (in, out)
        return inputs.reshape(-1, module.weight.shape[0 if transposed else 1])
    if isinstance(module, nn.Conv1d):  # a 1-D convolution is a 2-D one of height 1
        inputs = inputs.unsqueeze(2)
        kernel, dilation, padding, stride = (
            (1, module.kernel_size[0]),
            (1, module.dilation[0]),
            (0, module.padding[0]),
            (1, module.stride[0]),
        )
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    patches = F.unfold(inputs, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C·kh·kw, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def bias_of(module: nn.Module, param: str = "weight") -> torch.Tensor | None:
    """The bias added to the outputs of ``module``'s tensor ``param`` (a view of it for one attention projection)."""
    if not isinstance(module, nn.MultiheadAttention):
        return getattr(module, "bias", None)
    bias, width = module.in_proj_bias, module.embed_dim
    if bias is None or param == "in_proj_weight":
        return bias
    block = ("q_proj_weight", "k_proj_weight", "v_proj_weight").index(param)
    return bias[block * width : (block + 1) * width]


@contextlib.contextmanager
def _identity(linear: nn.Linear) -> Iterator[None]:
    """``linear`` computes the identity inside the block (weight I, bias 0); restored exactly after."""
    saved = [(p, p.detach().clone()) for p in (linear.weight, linear.bias) if p is not None]
    try:
        with torch.no_grad():
            linear.weight.copy_(torch.eye(linear.out_features, linear.in_features, dtype=linear.weight.dtype,
                                          device=linear.weight.device))
            if linear.bias is not None:
                linear.bias.zero_()
        yield
    finally:
        with torch.no_grad():
            for parameter, original in saved:
                parameter.copy_(original)


def _rows(module: nn.Module, param: str, called: nn.Module, args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    """The rows ``module.param`` multiplies, from the call of ``called`` (``module`` or the attention owning it)."""
    if called is not module:  # out_proj, applied by its attention: the attention's output before out_proj
        with _identity(module):
            context = called.forward(*args, **kwargs)[0]
        return as_rows(module, context)
    if isinstance(module, nn.MultiheadAttention):
        arguments = _attention_arguments(module, args, kwargs)
        if param == "in_proj_weight" and not _attends_to_itself(arguments):
            raise UsageError(f"cannot capture the inputs of {name}: its query, key and value differ (cross-attention)")
        inputs = arguments[_ATTENTION_INPUTS[param]]
        return inputs.reshape(-1, inputs.shape[-1])
    return as_rows(module, args[0])


def layer_inputs(
    model: nn.Module, module_name: str, calibration: torch.Tensor, *, batch_size: int = 256, param: str = "weight"
) -> Iterator[torch.Tensor]:
    """Yield, per batch of ``calibration`` (N, *input_shape), the rows (M, d_in) that the tensor ``param`` of
    module ``module_name`` multiplies.

    The model runs in eval mode (BatchNorm uses its running statistics) under no_grad, and
    each forward pass stops at the layer.
    """
    device = next(model.parameters()).device
    runs = (lambda start=start: model(calibration[start : start + batch_size].to(device))
            for start in range(0, len(calibration), batch_size))
    return captured_rows(model, module_name, runs, param=param)


def captured_rows(
    root: nn.Module, module_name: str, runs: Iterable[Callable[[], object]], *, param: str = "weight"
) -> Iterator[torch.Tensor]:
    """Yield, per call of ``runs`` (each a forward pass through ``root``: the model on a batch, or one block on
    its stored inputs), the rows (M, d_in) that the tensor ``param`` of ``root``'s module ``module_name``
    multiplies; each pass stops at the layer, in eval mode under no_grad."""
    module = root.get_submodule(module_name)
    called = root.get_submodule(forward_owner(root, module_name))
    taken: list[torch.Tensor] = []

    def take(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        taken.append(_rows(module, param, called, args, kwargs, f"{module_name}.{param}"))
        raise _Captured

    hook = called.register_forward_pre_hook(take, with_kwargs=True)
    was_training = root.training
    root.eval()
    try:
        for run in runs:
            taken.clear()
            with torch.no_grad(), contextlib.suppress(_Captured):
                run()
            if not taken:
                raise UsageError(f"the forward pass never reaches {module_name}: exclude it")
            yield taken[0]
    finally:
        hook.remove()
        root.train(was_training)


def input_norms(
    model: nn.Module, module_name: str, calibration: torch.Tensor, *, batch_size: int = 256, param: str = "weight"
) -> torch.Tensor:
    """‖X_j‖₂ over the calibration rows for every input feature j: shape (d_in,)."""
    total: torch.Tensor | None = None
    for rows in layer_inputs(model, module_name, calibration, batch_size=batch_size, param=param):
        squares = (rows.double() ** 2).sum(0)
        total = squares if total is None else total + squares
    assert total is not None  # calibration is never empty: checked by the callers
    return total.sqrt().float()


DEFAULT_CALIBRATION = 1024  # train examples, or for a language model:
DEFAULT_LANGUAGE_CALIBRATION = 128  # sequences, as Wanda and SparseGPT calibrate (128 sequences of the corpus)


def calibration_size(train: Split, size: int | None = None) -> int:
    """``size``, or by default :data:`DEFAULT_CALIBRATION` examples (:data:`DEFAULT_LANGUAGE_CALIBRATION` sequences
    of a language model's data, labels per token), at most the whole split."""
    if size is not None:
        return size
    return min(DEFAULT_LANGUAGE_CALIBRATION if train.y.dim() == 2 else DEFAULT_CALIBRATION, len(train))


def calibration_inputs(train: Split, size: int | None = None, *, seed: int = 0) -> torch.Tensor:
    """A seeded sample of ``size`` train inputs (N, *input_shape): the calibration set (no labels).

    None: :func:`calibration_size`'s default; a size given is refused above the split's."""
    size = calibration_size(train, size)
    if not 1 <= size <= len(train):
        raise UsageError(
            f"calibration size {size} is outside 1…{len(train)} (the train split): give a number of train examples"
        )
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    return train.x[index]
