"""The three-regime model of pruning (Zhou, Yang, Chang & Mahoney, ICML 2023).

- :mod:`~prunescope.regimes.connectivity`: linear mode connectivity (loss along the line, mc).
- :mod:`~prunescope.regimes.cka`: linear CKA of outputs and penultimate features.
- :mod:`~prunescope.regimes.classify`: regimes I / II-A / II-B and the temperature advice.
- :mod:`~prunescope.regimes.study`: the T × density phase diagram,
  ``study(RegimeSettings(...), out)`` (its jobs: :mod:`~prunescope.regimes.trials`).
- :mod:`~prunescope.regimes.select`: which checkpoint of a family to prune,
  ``select(checkpoints, density, out)``.
"""

from prunescope.regimes.cka import linear_cka, representations, similarity
from prunescope.regimes.classify import REGIMES, check_directions, classify, walk
from prunescope.regimes.connectivity import LinearPath, linear_path, mode_connectivity

__all__ = [
    "REGIMES",
    "LinearPath",
    "check_directions",
    "classify",
    "linear_cka",
    "linear_path",
    "mode_connectivity",
    "representations",
    "similarity",
    "walk",
]
