"""Options shared by the commands that read data or train: ``--model-arg``, ``--data-arg``, limits, optimiser.

``key=value`` values are read as JSON when they parse (``3``, ``0.5``, ``true``,
``[64, 32]``, ``"text"``), as a list when they hold commas (``64,32``), else as a string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from prunescope import cli_input
from prunescope.errors import UsageError
from prunescope.reconstruct import SELECTIONS
from prunescope.train.loop import OPTIMIZERS

ModelArg = Annotated[
    list[str] | None,
    typer.Option(help="Option for the model factory, key=value (repeatable), e.g. --model-arg width=64.",
                 show_default=False),
]
DataArg = Annotated[
    list[str] | None,
    typer.Option(help="Option for the dataset (factory), key=value (repeatable), e.g. --data-arg n_train=500.",
                 show_default=False),
]
LimitTrain = Annotated[
    int | None, typer.Option(help="Train on a stratified subset of this many examples.", show_default=False)
]
LimitVal = Annotated[
    int | None, typer.Option(help="Select and evaluate on a stratified subset of this many val examples.",
                             show_default=False)
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.",
                                     callback=cli_input.device)]
Optimizer = Annotated[str, typer.Option(help=f"{' or '.join(OPTIMIZERS)}.")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay.")]
LabelSmoothing = Annotated[float, typer.Option(help="Label smoothing in [0, 1).")]
Reconstruct = Annotated[str | None, typer.Option(
    help="Prune by layer-wise reconstruction on train calibration inputs: 'mask' re-fits the kept weights of the "
         "criterion's masks, 'obs' also chooses the masks by OBS saliency [off: masks only].", show_default=False)]
Calibration = Annotated[int | None, typer.Option(help="With --reconstruct, train examples used as calibration inputs "
                                                      "(no labels) [1024].", show_default=False)]
ReconstructFallback = Annotated[bool, typer.Option(
    help="With --reconstruct, prune the layers whose inputs cannot be captured (recurrent gates, embeddings, "
         "cross-attention's packed projection) with the criterion's masks alone instead of refusing; the result "
         "records which.")]
DEFAULT_CALIBRATION = 1024


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text:
        return [_value(part.strip()) for part in text.split(",") if part.strip()]
    return text


def assignments(option: str, items: Sequence[str] | None) -> dict[str, Any]:
    """``["width=64", "hidden=64,32"]`` → ``{"width": 64, "hidden": [64, 32]}``; UsageError for a bad item."""
    parsed: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{option} {item!r} is not key=value with a Python name as key, e.g. {option} width=64")
        parsed[key] = _value(text.strip())
    return parsed


@dataclass(frozen=True)
class DataChoice:
    """How a command that reads a checkpoint's dataset should rebuild it.

    data_dir: folder of the dataset files; options: ``--data-arg`` values that replace the
    stored dataset options; limit_train / limit_val: stratified subsets (None: as stored).
    """

    data_dir: str | None = None
    options: dict[str, Any] | None = None
    limit_train: int | None = None
    limit_val: int | None = None

    def overrides(self) -> dict[str, Any]:
        """Options to merge into a stored dataset spec."""
        limits = {"limit_train": self.limit_train, "limit_val": self.limit_val}
        return dict(self.options or {}) | {k: v for k, v in limits.items() if v is not None}


def data_choice(
    data_dir: str | None, data_arg: Sequence[str] | None, limit_train: int | None, limit_val: int | None
) -> DataChoice:
    return DataChoice(data_dir, assignments("--data-arg", data_arg), limit_train, limit_val)


def numbers(option: str, text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers given to ``option``; a one-line UsageError otherwise."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a comma-separated list of numbers, e.g. 0.05,0.1,0.2") from None
    if not values:
        raise UsageError(f"{option} is empty: give e.g. 0.05,0.1,0.2")
    return values


@dataclass(frozen=True)
class ReconstructChoice:
    """``--reconstruct`` / ``--calibration`` / ``--reconstruct-fallback``, checked: select None means off."""

    select: str | None = None
    calibration: int = DEFAULT_CALIBRATION
    fallback: bool = False

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of compare, sweep, scan and prune."""
        return {"reconstruct": self.select, "calibration": self.calibration, "reconstruct_fallback": self.fallback}

    def settings(self) -> dict[str, Any]:
        """What a result document's settings record (calibration and fallback only when reconstructing)."""
        on = self.select is not None
        return {"reconstruct": self.select, "calibration": self.calibration if on else None,
                "reconstruct_fallback": self.fallback if on else None}


def reconstruct_choice(
    reconstruct: str | None, calibration: int | None, fallback: bool, granularity: str = "weight"
) -> ReconstructChoice:
    """The checked reconstruction options; a one-line UsageError for a bad value or combination."""
    if reconstruct is None:
        if calibration is not None or fallback:
            raise UsageError("--calibration and --reconstruct-fallback apply with --reconstruct mask or obs")
        return ReconstructChoice()
    if reconstruct not in SELECTIONS:
        raise UsageError(f"unknown --reconstruct {reconstruct!r}: use one of {', '.join(SELECTIONS)}")
    if granularity != "weight":
        raise UsageError(f"--reconstruct re-fits a layer's weights: it applies to --granularity weight, not "
                         f"{granularity}")
    size = DEFAULT_CALIBRATION if calibration is None else calibration
    if size < 1:
        raise UsageError(f"calibration size {size} is below 1: give --calibration a number of train examples")
    return ReconstructChoice(reconstruct, size, fallback)
