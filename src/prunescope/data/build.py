"""Turn arrays read by a source into a :class:`Dataset`: carve val, limit train, normalise, wrap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from prunescope.data.splits import stratified_split
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError

Pair = tuple[np.ndarray, np.ndarray]

# Rows per chunk when computing statistics, so uint8 data is never copied whole to float64.
_CHUNK = 4096


@dataclass(frozen=True)
class RawData:
    """Arrays as a source provides them: x (N, *input_shape) in any numeric dtype, y (N,) ints.

    ``train`` is the dataset's original training data; val is carved from it unless the
    source has its own ``val``. ``normalise``: "global" (one mean/std), "channel" (per
    channel of (N, C, H, W)) or None (leave x as is). Statistics come from ``train``.
    """

    train: Pair
    test: Pair
    num_classes: int
    normalise: Literal["global", "channel"] | None
    val: Pair | None = None


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Raise UsageError unless y holds integers in [0, num_classes)."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{where}: labels must be a 1-D integer array, got dtype {y.dtype} and shape {tuple(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UsageError(f"{where}: labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")


def assemble(
    name: str,
    raw: RawData,
    *,
    val_fraction: float,
    seed: int,
    spec: dict[str, Any],
    limit_train: int | None = None,
    limit_val: int | None = None,
) -> Dataset:
    """Carve val (stratified, ``seed``), cut train to ``limit_train`` and val to ``limit_val``, normalise."""
    x, y = raw.train
    if raw.val is None:
        rest, taken = stratified_split(y, val_fraction, seed, what=f"{name}: val_fraction={val_fraction}")
        train, val = (x[rest], y[rest]), (x[taken], y[taken])
    else:
        train, val = raw.train, raw.val
    if limit_train is not None and limit_train < len(train[1]):
        _, keep = stratified_split(train[1], limit_train, seed, what=f"{name}: limit_train={limit_train}")
        train = (train[0][keep], train[1][keep])
    if limit_val is not None and limit_val < len(val[1]):
        _, keep = stratified_split(val[1], limit_val, seed, what=f"{name}: limit_val={limit_val}")
        val = (val[0][keep], val[1][keep])
    # Statistics come from the whole original train data, so they (and hence the normalised
    # val/test tensors) do not depend on seed or limit_train.
    mean, std = _moments(x, raw.normalise)
    return Dataset(
        name=name,
        train=_to_split(train, mean, std),
        val=_to_split(val, mean, std),
        test=_to_split(raw.test, mean, std),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_classes=raw.num_classes,
        spec=spec,
    )


def _moments(x: np.ndarray, normalise: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of x, broadcastable against x[i:j]; (0, 1) when not normalising.

    Scaling pixels to [0, 1] first would cancel out here, so raw units are used directly.
    """
    if normalise is None:
        return np.zeros(1), np.ones(1)
    axes = (0, *range(2, x.ndim)) if normalise == "channel" else None
    total = squares = np.zeros(())
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK].astype(np.float64)
        total = total + chunk.sum(axis=axes)
        squares = squares + np.square(chunk).sum(axis=axes)
    count = x.size / (x.shape[1] if normalise == "channel" else 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant input stays constant instead of becoming NaN
    shape = (1, -1, *([1] * (x.ndim - 2))) if normalise == "channel" else ()
    return mean.reshape(shape), std.reshape(shape)


def _to_split(pair: Pair, mean: np.ndarray, std: np.ndarray) -> Split:
    """float32 x normalised in place, int64 y."""
    x = pair[0].astype(np.float32)
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    return Split(torch.from_numpy(x), torch.from_numpy(pair[1].astype(np.int64)))
