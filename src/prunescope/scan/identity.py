"""What a scan's study belongs to: a fingerprint of the model and of the data it was evaluated on.

A study reused by another model, dataset or setting would hand back values measured on
something else, so the scan stores these fingerprints in the study and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from prunescope.data.types import Split
from prunescope.targets import Target


def _raw(tensor: torch.Tensor) -> bytes:
    """dtype, shape and the raw bytes of ``tensor`` (viewed as bytes: bfloat16 has no NumPy twin)."""
    tensor = tensor.detach().cpu().contiguous()
    return f"{tensor.dtype}{tuple(tensor.shape)}".encode() + tensor.flatten().view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module, targets: Sequence[Target]) -> str:
    """SHA-256 (hex, 16 chars) of the target names and shapes and of every parameter and buffer."""
    digest = hashlib.sha256()
    for target in targets:
        digest.update(f"{target.name}{target.shape}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode() + _raw(tensor))
    return digest.hexdigest()[:16]


def data_fingerprint(splits: Iterable[Split]) -> str:
    """SHA-256 (hex, 16 chars) of the inputs and labels of ``splits``."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(_raw(split.x) + _raw(split.y))
    return digest.hexdigest()[:16]
