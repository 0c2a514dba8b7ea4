"""The in-memory form every dataset takes: three tensor splits and what a model needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Split:
    """One split held as tensors.

    x: float32, shape (N, *input_shape), already normalised; or int64 token ids (N, T) of a language model.
    y: int64 class indices, shape (N,); or the next token at every position, (N, T).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Train / val / test splits of one dataset.

    ``val`` is carved from the original training data (seeded, stratified); ``test`` is the
    dataset's own test split and is only read once, at the end of a run. ``spec`` holds the
    arguments that rebuild this exact dataset with :func:`prunescope.data.load_dataset`
    (stored in checkpoints and results).
    """

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def vocabulary(self) -> int | None:
        """Token ids of a language model's data (labels one per token, ``y`` (N, T)); None for any other data."""
        return self.num_classes if self.train.y.dim() == 2 else None

    def split(self, name: str) -> Split:
        """The split called ``name``: ``train``, ``val`` or ``test`` (ValueError otherwise)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)
