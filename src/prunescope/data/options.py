"""Parse option values that may arrive as Python values or as command-line strings."""

from __future__ import annotations

import contextlib
import math
import re

from prunescope.errors import UsageError


def as_int(label: str, value: object, *, minimum: int) -> int:
    """An integer >= ``minimum``; accepts ints and decimal strings such as ``"500"``."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None or number < minimum:
        raise UsageError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return number


def as_float(label: str, value: object, *, low: float, high: float | None = None, open_low: bool = False) -> float:
    """A finite float in ``[low, high)`` (or ``(low, high)`` with ``open_low``); accepts numeric strings."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a number: reported below
            number = float(value)
    too_low = number <= low if open_low else number < low
    if not math.isfinite(number) or too_low or (high is not None and number >= high):
        bounds = f"{'>' if open_low else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise UsageError(f"{label} must be a number {bounds}, got {value!r}")
    return number


def as_shape(label: str, value: object) -> tuple[int, ...]:
    """A shape of positive ints from a tuple/list or a string like ``"1x8x8"`` or ``"3,32,32"``."""
    parts: list[object] | None = None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[x,\s()\[\]]+", value.strip()) if p]
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    if not parts:
        raise UsageError(f"{label} must be a shape such as 1x8x8 or (1, 8, 8), got {value!r}")
    return tuple(as_int(label, part, minimum=1) for part in parts)
