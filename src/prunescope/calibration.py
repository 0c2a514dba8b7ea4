"""What a layer sees: its inputs on calibration data, as the rows a weight matrix multiplies.

Calibration-aware pruning (Wanda's feature norms, OBS reconstruction's Hessians) needs,
for a Linear or convolution, the matrix ``X`` of shape (M, d_in) whose rows are the input
vectors the weight, viewed as (d_out, d_in), is applied to: the last dimension of a
Linear's input, or the im2col patches (in-channel, kh, kw) of a convolution. This module
captures them with a forward pre-hook, stops the forward pass right after the layer (the
rest of the network is not needed), and streams them batch by batch so that memory stays
at one batch of one layer.

Only train examples serve as calibration data (never val or test), and no label is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.targets import Target


class _Captured(Exception):
    """Raised by the capture hook to end a forward pass once the layer's input is taken."""


def supports(module: nn.Module) -> str | None:
    """``None`` when the inputs of ``module``'s weight can be captured, else the reason why not."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            return f"a grouped convolution (groups={module.groups})"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"a convolution with padding {module.padding!r} / mode {module.padding_mode!r}"
        return None
    return f"a {type(module).__name__} (only Linear and ungrouped Conv1d/Conv2d inputs are captured)"


def check_supported(model: nn.Module, targets: Sequence[Target]) -> None:
    """Raise a one-line UsageError naming the first target whose inputs cannot be captured."""
    for target in targets:
        module = model.get_submodule(target.module)
        reason = supports(module) if target.param == "weight" else f"the tensor {target.param}"
        if reason is not None:
            raise UsageError(
                f"cannot capture the inputs of {target.name}: it is {reason}; exclude it (--exclude "
                f"{target.module or target.name!r}) or use a criterion that needs no calibration data"
            )


def as_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The input vectors (M, d_in) that ``module``'s weight, viewed as (d_out, d_in), multiplies."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, module.in_features)
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


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as (d_out, d_in), a view in the layout of :func:`as_rows`."""
    return module.weight.reshape(module.weight.shape[0], -1)


def layer_inputs(
    model: nn.Module, module_name: str, calibration: torch.Tensor, *, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """Yield, per batch of ``calibration`` (N, *input_shape), the rows (M, d_in) module ``module_name`` multiplies.

    The model runs in eval mode (BatchNorm uses its running statistics) under no_grad, and
    each forward pass stops at the layer.
    """
    module = model.get_submodule(module_name)
    device = next(model.parameters()).device
    taken: list[torch.Tensor] = []

    def take(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        taken.append(as_rows(module, args[0]))
        raise _Captured

    hook = module.register_forward_pre_hook(take)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(calibration), batch_size):
            taken.clear()
            with torch.no_grad(), contextlib.suppress(_Captured):
                model(calibration[start : start + batch_size].to(device))
            if not taken:
                raise UsageError(f"the forward pass never reaches {module_name}: exclude it")
            yield taken[0]
    finally:
        hook.remove()
        model.train(was_training)


def input_norms(
    model: nn.Module, module_name: str, calibration: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """‖X_j‖₂ over the calibration rows for every input feature j: shape (d_in,)."""
    total: torch.Tensor | None = None
    for rows in layer_inputs(model, module_name, calibration, batch_size=batch_size):
        squares = (rows.double() ** 2).sum(0)
        total = squares if total is None else total + squares
    assert total is not None  # calibration is never empty: checked by the callers
    return total.sqrt().float()


def calibration_inputs(train: Split, size: int = 1024, *, seed: int = 0) -> torch.Tensor:
    """A seeded sample of ``size`` train inputs (N, *input_shape): the calibration set (no labels)."""
    if not 1 <= size <= len(train):
        raise UsageError(
            f"calibration size {size} is outside 1…{len(train)} (the train split): give a number of train examples"
        )
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    return train.x[index]
