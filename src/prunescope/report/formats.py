"""How the page writes numbers: percentages, points, SI counts, bytes, milliseconds, intervals; read defensively
(a value missing from the document is a dash, never an error).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def pct(value: Any, digits: int = 2) -> str:
    number = num(value)
    return "–" if number is None else f"{number * 100:.{digits}f}%"


def pts_text(delta: float | None) -> str:
    return "–" if delta is None else f"{delta * 100:+.2f}"


def si(value: Any) -> str:
    number = num(value)
    if number is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {unit}"
    return f"{number:.0f}"


def bytes_text(value: Any) -> str:
    number = num(value)
    if number is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(number) >= scale:
            return f"{number / scale:.2f} {unit}"
    return f"{number:.0f} B"


def count_text(value: Any) -> str:
    number = num(value)
    return "–" if number is None else f"{number:,.0f}"


def fixed(value: Any, digits: int = 4) -> str:
    number = num(value)
    return "–" if number is None else f"{number:.{digits}f}"


def ms_text(value: Any) -> str:
    number = num(value)
    return "–" if number is None else f"{number:.3f} ms"


def setting(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "–"
    return json.dumps(value, ensure_ascii=False)


def acc_of(metrics: Any) -> float | None:
    return num(metrics.get("accuracy")) if isinstance(metrics, Mapping) else None


def ci_of(metrics: Any) -> tuple[float, float] | None:
    if not isinstance(metrics, Mapping):
        return None
    ci = metrics.get("accuracy_ci")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(num(v) is not None for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def latency_at(measure: Mapping[str, Any], batch: str = "1") -> Mapping[str, Any]:
    latency = measure.get("latency")
    entry = latency.get(batch) if isinstance(latency, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def methods_of(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    methods = doc.get("methods")
    return [m for m in methods if isinstance(m, Mapping)] if isinstance(methods, list) else []


def finished(method: Mapping[str, Any]) -> bool:
    return not method.get("error")
