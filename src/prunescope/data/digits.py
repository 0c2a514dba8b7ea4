"""scikit-learn's bundled 8x8 digits (1,797 images, no download), with a fixed test split."""

from __future__ import annotations

from prunescope.data.build import RawData
from prunescope.data.splits import stratified_split

TEST_FRACTION = 0.2
# The set has no test split of its own; a fixed seed makes the carved one the same for
# every run whatever ``seed`` is, so test accuracies stay comparable.
TEST_SEED = 0


def read_digits() -> RawData:
    """x float64 (N, 1, 8, 8) with values 0..16, y int (N,); 20 % stratified test split."""
    from sklearn.datasets import load_digits  # slow import, paid only when used

    bunch = load_digits()
    x, y = bunch.images[:, None], bunch.target
    rest, test = stratified_split(y, TEST_FRACTION, TEST_SEED, what="digits: test split")
    return RawData(train=(x[rest], y[rest]), test=(x[test], y[test]), num_classes=10, normalise="global")
