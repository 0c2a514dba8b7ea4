"""What every measurement shares: a model's device, an example batch, one forward pass in eval mode, names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prunescope.errors import UsageError

ORIG_SUFFIX = "_orig"


MASK_SUFFIX = "_mask"


def join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_input_shape(input_shape: tuple[int, ...]) -> None:
    if not all(isinstance(d, int) and d >= 1 for d in input_shape):
        raise UsageError(f"input shape must be positive integers, got {tuple(input_shape)}")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for a model with neither."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def example_input(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    fill: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """``fill((batch_size, *input_shape))`` in the model's floating dtype (float32 if none)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return fill((batch_size, *input_shape), device=device, dtype=dtype)


def forward(model: nn.Module, batch: torch.Tensor, input_shape: tuple[int, ...]) -> None:
    try:
        model(batch)
    except Exception as err:  # any failure here means the model does not take this input
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"model cannot run on input shape {tuple(input_shape)}: {first_line}") from err


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, then restore each submodule's own training flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
