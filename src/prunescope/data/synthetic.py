"""A generated, learnable classification task: class-dependent means plus Gaussian noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prunescope.data.build import RawData
from prunescope.data.options import as_float, as_int, as_shape


def read_synthetic(
    *,
    n_train: int | str = 1000,
    n_test: int | str = 200,
    input_shape: Sequence[int] | str = (1, 8, 8),
    num_classes: int | str = 10,
    noise: float | str = 1.0,
    data_seed: int | str = 0,
) -> RawData:
    """x float32 (N, *input_shape), y int64 (N,), classes balanced.

    Each class has a mean drawn from N(0, 1) per input element; a sample is its class mean
    plus ``noise`` times N(0, 1). Larger noise makes the task harder. ``data_seed`` fixes the
    samples (like a dataset on disk); the ``seed`` of :func:`load_dataset` only picks val.
    ``n_train`` counts the original train data, from which val is carved.
    """
    shape = as_shape("synthetic: input_shape", input_shape)
    classes = as_int("synthetic: num_classes", num_classes, minimum=2)
    train_size = as_int("synthetic: n_train", n_train, minimum=1)
    test_size = as_int("synthetic: n_test", n_test, minimum=1)
    spread = as_float("synthetic: noise", noise, low=0.0)
    rng = np.random.default_rng(as_int("synthetic: data_seed", data_seed, minimum=0))
    means = rng.standard_normal((classes, *shape), dtype=np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % classes)
        return means[y] + spread * rng.standard_normal((n, *shape), dtype=np.float32), y

    return RawData(train=draw(train_size), test=draw(test_size), num_classes=classes, normalise=None)
