"""Splits a user handed over from Python (``prunescope.wrap``), kept in one tensor file the CLI reads back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from prunescope.data.build import RawData
from prunescope.errors import UsageError
from prunescope.io import atomic_write

_SPLITS = ("train", "val", "test")


def write_saved(path: str | os.PathLike[str], raw: RawData) -> Path:
    """Write ``raw``'s splits (x, y as tensors) and class count to ``path``, atomically."""
    payload = {"num_classes": raw.num_classes}
    for part in _SPLITS:
        pair = getattr(raw, part)
        if pair is not None:
            payload[part] = {"x": torch.as_tensor(pair[0]), "y": torch.as_tensor(pair[1])}
    path = Path(path)
    atomic_write(path, lambda file: torch.save(payload, file))
    return path


def read_saved(*, path: str | os.PathLike[str] | None = None) -> RawData:
    """The splits :func:`write_saved` wrote; tensors only (``weights_only``), used as they are (no normalisation)."""
    if path is None:
        raise UsageError("dataset 'saved' needs --data-arg path=FILE (a data.pt written by prunescope.wrap)")
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"saved dataset {path} does not exist: pass --data-arg path=FILE") from None
    except Exception as error:  # a damaged or foreign file
        raise UsageError(f"saved dataset {path} is damaged or not one prunescope.wrap wrote: write it again") from error
    if not isinstance(payload, dict) or "train" not in payload or "test" not in payload:
        raise UsageError(f"saved dataset {path} is not one prunescope.wrap wrote: write it again")

    def pair(part: str) -> tuple[np.ndarray, np.ndarray] | None:
        split = payload.get(part)
        return None if split is None else (split["x"].numpy(), split["y"].numpy())

    return RawData(train=pair("train"), val=pair("val"), test=pair("test"),
                   num_classes=int(payload["num_classes"]), normalise=None)
