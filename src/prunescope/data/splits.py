"""The one stratified, seeded carving function every dataset uses (val, digits' test, limit_train)."""

from __future__ import annotations

import math

import numpy as np

from prunescope.errors import UsageError


def stratified_split(y: np.ndarray, size: float | int, seed: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into ``(rest, taken)``, keeping class proportions in both parts.

    y: integer labels, shape (N,). size: a fraction in (0, 1) of N, or a sample count.
    Each class gets within one sample of its proportional share. Both index arrays are
    sorted, so the parts keep the original order. ``what`` prefixes error messages.
    """
    n = len(y)
    count = math.ceil(size * n) if isinstance(size, float) else int(size)
    if n == 0:
        raise UsageError(f"{what}: there are no samples to split")
    classes, per_class = np.unique(y, return_counts=True)
    if per_class.min() < 2:
        label = classes[per_class.argmin()]
        raise UsageError(f"{what}: class {label} has only one sample; a stratified split needs at least 2 per class")
    if min(count, n - count) < len(classes):
        raise UsageError(
            f"{what}: splitting {n} samples into {n - count} + {count} leaves a part "
            f"smaller than the number of classes ({len(classes)}); change the size"
        )
    # sklearn is slow to import (~1 s); only pay for it when a split is made.
    from sklearn.model_selection import train_test_split

    rest, taken = train_test_split(np.arange(n), test_size=count, stratify=y, random_state=seed)
    return np.sort(rest), np.sort(taken)
