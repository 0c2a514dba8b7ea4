"""Pickers by name: :data:`PICKERS` and :func:`make_picker`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from prunescope.errors import UsageError
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.pickers import EnsemblePicker, KneePicker, Picker, ThresholdPicker

PICKERS: dict[str, Callable[..., Picker]] = {
    "threshold": ThresholdPicker,
    "sconce": ThresholdPicker.sconce,
    "knee": KneePicker,
    "budget": BudgetPicker,
    "ensemble": EnsemblePicker,
}


def make_picker(name: str, **options: object) -> Picker:
    """Build a picker by name: threshold, sconce, knee, budget or ensemble.

    The ensemble's ``members`` may be pickers or picker names; by default it is the
    ``"min"`` of threshold and knee (sconce likewise combines its two methods).
    """
    if name not in PICKERS:
        raise UsageError(f"unknown picker {name!r}: use one of {', '.join(PICKERS)}")
    factory = PICKERS[name]
    allowed = {"degradation"} if name == "sconce" else {f.name for f in fields(factory) if f.init}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"the {name} picker has no option {unknown[0]!r}; options: {', '.join(sorted(allowed))}")
    if name == "ensemble":
        members = options.get("members") or ["threshold", "knee"]
        options["members"] = [make_picker(m) if isinstance(m, str) else m for m in members]
        if not all(isinstance(m, Picker) for m in options["members"]):
            raise UsageError("ensemble members must be pickers or picker names")
    return factory(**options)
