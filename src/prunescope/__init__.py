"""prunescope: how far can each layer, and the whole model, be pruned?"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public entry points, imported on first use so that ``import prunescope`` stays light.
_ENTRY_POINTS = {"wrap": "prunescope.pipeline.wrap"}


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'prunescope' has no attribute {name!r}")
