"""Resolve the ``--device`` option: ``auto`` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from prunescope.errors import UsageError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a usable ``torch.device``; ``"auto"`` picks ``cuda`` when available."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but no CUDA GPU is present: use --device cpu or auto")
    return resolved
