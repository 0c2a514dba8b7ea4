"""The search space of a hyperparameter study: TrainConfig's knobs as Optuna distributions.

A space is declared in TOML or in Python (a dict of the same shape)::

    epochs = 20                                  # a plain value: fixed, not searched
    [lr]
    low = 1e-3
    high = 0.3
    log = true                                   # searched on a log scale
    [batch_size]
    type = "int"                                 # float (default with low/high), int, categorical
    low = 16
    high = 256
    log = true
    [optimizer]
    choices = ["sgd", "adamw"]                   # categorical

Names are the fields of :class:`~prunescope.train.TrainConfig` (``lr``, ``momentum``,
``weight_decay``, ``batch_size``, ``epochs``, ``label_smoothing``, ``optimizer``,
``schedule``), so every trial is an ordinary :func:`~prunescope.train.train` call. Every
inconsistency (empty space, low > high, a log scale with a non-positive bound, an unknown
name or key) is a one-line :class:`~prunescope.errors.UsageError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from prunescope.errors import UsageError
from prunescope.io import read_toml
from prunescope.train import TrainConfig

KNOBS = ("lr", "momentum", "weight_decay", "batch_size", "epochs", "label_smoothing", "optimizer", "schedule")
KINDS = ("float", "int", "categorical")
_KEYS = {"type", "low", "high", "log", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched knob: ``kind`` float / int (``low`` ≤ value ≤ ``high``, ``log`` scale) or categorical."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> BaseDistribution:
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def unit(self, values: np.ndarray | list[Any]) -> np.ndarray:
        """Values mapped to [0, 1] over the declared range: log10 scale where ``log``; a choice's index."""
        if self.kind == "categorical":
            return np.array([self.choices.index(v) for v in values], float) / max(len(self.choices) - 1, 1)
        low, high, x = float(self.low), float(self.high), np.asarray(values, float)
        if self.log:
            low, high, x = math.log10(low), math.log10(high), np.log10(x)
        return (x - low) / (high - low) if high > low else np.zeros_like(x)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Space:
    """Searched knobs and fixed knobs (applied to every trial)."""

    params: tuple[Param, ...]
    fixed: tuple[tuple[str, Any], ...] = ()

    @property
    def names(self) -> list[str]:
        """The searched knobs' names, in the space's order."""
        return [p.name for p in self.params]

    def param(self, name: str) -> Param:
        """The searched knob ``name`` (a one-line UsageError when it is not searched)."""
        for p in self.params:
            if p.name == name:
                return p
        raise UsageError(f"{name!r} is not a searched hyperparameter; searched: {', '.join(self.names)}")

    def only(self, names: Sequence[str]) -> Space:
        """The searched knobs ``names`` alone (no fixed ones)."""
        return Space(tuple(self.param(name) for name in names))

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna's distribution of every searched knob, by name."""
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values of every searched knob."""
        values = {}
        for p in self.params:
            if p.kind == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, p.choices)
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
        return values

    def config(self, values: Mapping[str, Any], seed: int) -> TrainConfig:
        """The TrainConfig of one trial: defaults ← fixed knobs ← ``values``."""
        return TrainConfig(**{**dict(self.fixed), **values, "seed": seed})

    def to_dict(self) -> dict[str, Any]:
        """The space as its TOML file has it: the fixed knobs' values and one table per searched knob."""
        return {**dict(self.fixed), **{p.name: p.to_dict() for p in self.params}}


DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 1e-3, "high": 0.5, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "momentum": {"low": 0.0, "high": 0.95},
    "batch_size": {"type": "int", "low": 32, "high": 256, "log": True},
    "epochs": 10,
}


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"search space: {name}.{key} must be a finite number, got {value!r}")
    return float(value)


def _param(name: str, entry: Mapping[str, Any]) -> Param:
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise UsageError(f"search space: {name} has unknown key {unknown[0]!r}; keys: {', '.join(sorted(_KEYS))}")
    kind = entry.get("type", "categorical" if "choices" in entry else "float")
    if kind not in KINDS:
        raise UsageError(f"search space: {name} has type {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise UsageError(f"search space: {name} is categorical and needs a non-empty list of choices")
        if len(set(map(repr, choices))) != len(choices):
            raise UsageError(f"search space: {name} lists a choice twice")
        return Param(name, kind, choices=tuple(choices))
    if "low" not in entry or "high" not in entry:
        raise UsageError(f"search space: {name} needs low and high (or choices)")
    low, high = _number(name, "low", entry["low"]), _number(name, "high", entry["high"])
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"search space: {name}.log must be true or false, got {log!r}")
    if low > high:
        raise UsageError(f"search space: {name} has low {low:g} above high {high:g}")
    if log and low <= 0:
        raise UsageError(f"search space: {name} is on a log scale, so its bounds must be positive (low is {low:g})")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise UsageError(f"search space: {name} is an int, so low and high must be whole numbers")
        return Param(name, kind, int(low), int(high), log)
    return Param(name, kind, low, high, log)


def parse_space(declared: Mapping[str, Any], source: str = "the search space") -> Space:
    """A checked :class:`Space` from its declaration (the parsed TOML, or a dict of the same shape)."""
    params, fixed = [], []
    for name, entry in declared.items():
        if name not in KNOBS:
            raise UsageError(f"{source}: unknown hyperparameter {name!r}; TrainConfig's knobs: {', '.join(KNOBS)}")
        if isinstance(entry, Mapping):
            params.append(_param(name, entry))
        else:
            fixed.append((name, entry))
    if not params:
        raise UsageError(f"{source} searches nothing: declare at least one knob with low/high or choices")
    space = Space(tuple(params), tuple(fixed))
    try:  # a fixed value TrainConfig refuses (epochs = 0, optimizer = "adam") is the user's to fix
        space.config({}, seed=0)
    except TypeError as error:
        raise UsageError(f"{source}: {error}") from None
    except UsageError as error:
        raise UsageError(f"{source}: {error}") from None
    return space


def load_space(path: str | Path | None) -> Space:
    """The space in TOML file ``path``, or :data:`DEFAULT_SPACE` for None."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default search space")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"search space file {path} not found")
    declared = read_toml(path, f"search space file {path}")
    return parse_space(declared, f"search space file {path}")
