"""Workflows: the pieces of the library and the studies composed into what a command does.

- :mod:`~prunescope.pipeline.job`: the main job, ``run(RunConfig(...), out)`` (``prunescope run``).
- :mod:`~prunescope.pipeline.config`: its settings (``RunConfig``, the TOML file, the rules between settings).
- :mod:`~prunescope.pipeline.compare`: every allocation at exactly equal sparsity (``prunescope compare``).
- :mod:`~prunescope.pipeline.sweep`: one allocation over several sparsities (``prunescope sweep``).
- :mod:`~prunescope.pipeline.prune`: prune, recalibrate, fine-tune and save (``prunescope prune``).
- :mod:`~prunescope.pipeline.recovered`: how far the model goes after fine-tuning (bisected on val).
- :mod:`~prunescope.pipeline.wrap`: a model trained in Python → a checkpoint (``prunescope.wrap``).

``run`` and ``RunConfig`` are imported on first use, so that importing one workflow does not
import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"run": "prunescope.pipeline.job", "RunConfig": "prunescope.pipeline.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunescope.pipeline' has no attribute {name!r}")
