"""A complete user model file for prunescope: one model factory and one dataset factory.

Use it from this folder (or anywhere on PYTHONPATH):

    prunescope train --model my_model:build --data my_model:data --model-arg width=16 --epochs 3 --out runs/mine
    prunescope scan  --checkpoint runs/mine/model.pt --trust-factory --out scans/mine

The model factory receives, by keyword, whatever its signature asks for among what
prunescope knows about the data (``input_shape`` / ``in_channels`` / ``in_features`` and
``num_classes`` / ``n_classes``, …) plus your ``--model-arg`` options, and returns an
``nn.Module`` mapping a batch ``(N, *input_shape)`` to logits ``(N, num_classes)``.
The dataset factory receives your ``--data-arg`` options and returns ``(train, test)``
(or ``(train, val, test)``, or a dict with those keys), each split an ``(x, y)`` pair of
tensors, a ``TensorDataset`` or any map-style ``torch.utils.data.Dataset`` of ``(x, y)``.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class SmallNet(nn.Module):
    """Conv → depthwise conv with a residual add → global average → linear."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.depthwise(x))
        return self.head(x.mean(dim=(2, 3)))


def build(in_channels: int, n_classes: int, width: int = 8) -> nn.Module:
    """Model factory: prunescope passes in_channels and n_classes; width comes from --model-arg."""
    return SmallNet(in_channels, n_classes, width)


def data(n_train: int = 300, n_test: int = 100, seed: int = 0):
    """Dataset factory: three classes of 1×8×8 images, a class-dependent pattern plus noise."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(3, 1, 8, 8, generator=generator)

    def split(n: int) -> TensorDataset:
        y = torch.arange(n) % 3
        return TensorDataset(patterns[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=generator), y)

    return split(n_train), split(n_test)
