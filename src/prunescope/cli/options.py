"""The options and value parsers that the commands share, defined once.

Data and model (``--model-arg``, ``--data-arg``, limits), training (optimiser), devices, pruning
(criterion, granularity, reconstruction), shared studies (``--storage``, ``--executor``, ``--workers``, …)
and output (``--out``).

``key=value`` values are read as JSON when they parse (``3``, ``0.5``, ``true``,
``[64, 32]``, ``"text"``), as a list when they hold commas (``64,32``), else as a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from prunescope.calibration import calibration_size
from prunescope.checkpoint import load_checkpoint
from prunescope.cli import inputs as cli_input
from prunescope.criteria import CRITERIA
from prunescope.data import load_from_spec
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.io import parse_json
from prunescope.masks import check_sparsity
from prunescope.pick.registry import WEIGHT_METHODS
from prunescope.reconstruct import SELECTIONS, reconstruction_plan
from prunescope.scores import Score
from prunescope.structured.importance import IMPORTANCES
from prunescope.targets import chosen_targets
from prunescope.train import DEFAULT_BN_BATCHES
from prunescope.train.loop import OPTIMIZERS
from prunescope.trials.executors import EXECUTORS
from prunescope.units import UNIT_KINDS, criterion_for

ModelArg = Annotated[
    list[str] | None,
    typer.Option(help="Option for the model factory, key=value (repeatable), e.g. --model-arg width=64.",
                 show_default=False),
]
ModelName = "Zoo model, package.module:factory, hf:DIR (a save_pretrained folder), timm:NAME or torchvision:NAME"
Weights = Annotated[
    Path | None,
    typer.Option(help="Starting weights of the model: a state dict saved with torch.save (read as tensors only) or a "
                      ".safetensors file; it must fit the model.", show_default=False),
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
                                                      "(no labels) [1024; 128 sequences of text].", show_default=False)]
ReconstructFallback = Annotated[bool, typer.Option(
    help="With --reconstruct, prune the layers whose inputs cannot be captured (recurrent gates, embeddings, "
         "cross-attention's packed projection) with the criterion's masks alone instead of refusing; the result "
         "records which.")]


def _value(text: str) -> Any:
    try:
        return parse_json(text, "the value")
    except UsageError:  # not JSON: a list or a string
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
    calibration: int | None = None  # None: calibration's default (1024 examples; 128 sequences of text)
    fallback: bool = False
    plan: str | None = None  # how it runs on the model: block by block, or through the whole model and why

    def for_model(self, model: nn.Module, data: Dataset, include: Sequence[str] = (),
                  exclude: Sequence[str] = ()) -> ReconstructChoice:
        """This choice with the calibration size the train split gives by default and how reconstruction runs on
        the layers the command prunes (:func:`prunescope.reconstruct.reconstruction_plan`), so that results
        record both."""
        if not self.select:
            return self
        targets = chosen_targets(model, data.vocabulary, include, exclude)[0]
        line = reconstruction_plan(model, targets, data.train.x[:1]).line()
        return replace(self, calibration=calibration_size(data.train, self.calibration), plan=line)

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of compare, sweep, scan and prune."""
        return {"reconstruct": self.select, "calibration": self.calibration, "reconstruct_fallback": self.fallback}

    def settings(self) -> dict[str, Any]:
        """What a result document's settings record (calibration and fallback only when reconstructing)."""
        on = self.select is not None
        return {"reconstruct": self.select, "calibration": self.calibration if on else None,
                "reconstruct_fallback": self.fallback if on else None, "reconstruct_plan": self.plan if on else None}


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
    size = calibration
    if size is not None and size < 1:
        raise UsageError(f"calibration size {size} is below 1: give --calibration a number of train examples")
    return ReconstructChoice(reconstruct, size, fallback)

# Shared studies: every command that opens one (scan, hparams, regimes) takes these.
StudyName = Annotated[str, typer.Option(help="Name of the study in --storage (one database holds many).")]
Storage = Annotated[
    str | None,
    typer.Option(help="Optuna storage: postgresql://user@host/db (shared by machines) or a journal file "
                      "(default: OUT/study.journal).", show_default=False),
]
ExecutorKind = Annotated[
    str | None,
    typer.Option("--executor", help=f"Who evaluates: {', '.join(EXECUTORS)} (default: local for one worker, "
                                    "else processes).", show_default=False),
]
Workers = Annotated[int, typer.Option(help="Workers evaluating in parallel (processes or Ray actors).")]
RayAddress = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join with --executor ray (auto: the running one; default: start a local one).",
                 show_default=False),
]
GpusPerWorker = Annotated[float, typer.Option(help="GPU share of each Ray worker (0.25: four per GPU).")]
HeartbeatInterval = Annotated[int, typer.Option(help="Seconds between heartbeats of a running trial.")]
GracePeriod = Annotated[
    int, typer.Option(help="Seconds without a heartbeat after which a trial's worker counts as dead and its "
                           "point is evaluated again (a worker gone from this host: at once).")
]


Out = Annotated[Path, typer.Option(help="Output directory; rerunning with the same one resumes.",
                                   callback=cli_input.output_dir)]
DataDir = Annotated[
    str | None, typer.Option(help="Folder with the dataset files (or set PRUNESCOPE_DATA_DIR).", show_default=False,
                             callback=cli_input.data_dir)
]
Seed = Annotated[int, typer.Option(help="Seed of the split, the initialisation and the shuffling.")]
Criterion = Annotated[str, typer.Option(help=f"Which weights go first: {', '.join(CRITERIA)}.")]
Allocation = Annotated[str, typer.Option(help=f"How the global sparsity is split: {', '.join(WEIGHT_METHODS)}.")]
Sparsities = Annotated[str, typer.Option(help="Comma-separated global sparsities in [0, 1).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
DEFAULT_SPARSITIES_TEXT = "0.5,0.7,0.8,0.9,0.95"
Points = Annotated[float | None, typer.Option(
    help="Allowed drop: points of accuracy (0.5 = half a point), or for a language model percent more "
         "perplexity (5 = 5% higher) [0.5 pts; 5%].", show_default=False)]
Include = Annotated[list[str] | None, typer.Option(help="Glob of layers to prune (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="Glob of layers to keep dense (repeatable).")]
CheckpointOption = Annotated[Path, typer.Option(help="A checkpoint written by prunescope train.")]
Granularity = Annotated[str, typer.Option(help="weight (unstructured) or channel (coupled channel groups, physically "
                                                "removable).")]
UnitKind = Annotated[str, typer.Option(
    "--units", help="With --granularity weight, what one unit (one curve, one sparsity) is: matrix (each weight "
                    "tensor) or block (each block of the network, e.g. a transformer's decoder layer: its matrices "
                    "share one sparsity, spread over them by count).")]
UnitCriterion = Annotated[str | None, typer.Option(
    help=f"What goes first: weights ({', '.join(CRITERIA)}; default magnitude) or, with --granularity channel, "
         f"channels ({', '.join(IMPORTANCES)}; default l2, or the importance of the pick's scan).",
    show_default=False)]
ImportanceAlias = Annotated[str | None, typer.Option(hidden=True, help="Same as --criterion (channels).")]
RecalibrateBN = Annotated[int | None, typer.Option(help=f"Re-estimate BatchNorm statistics of every pruned model on "
                                                        f"this many batches of 128 training examples, the same for "
                                                        f"every method (0: off). Default: {DEFAULT_BN_BATCHES} for a "
                                                        f"model with BatchNorm, off without.", show_default=False)]
TrustFactoryOption = Annotated[bool, typer.Option(help="Import a package.module:function model or dataset factory "
                                                       "named in an input file (that runs its code): only for files "
                                                       "you trust.")]


def parse_sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--sparsities {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.9") from None
    if not values:
        raise UsageError("--sparsities is empty: give e.g. 0.5,0.7,0.9")
    return [check_sparsity(value, "--sparsities:") for value in values]  # before any work that would be lost


def at_least(option: str, value: int | None, minimum: int) -> None:
    """UsageError unless ``value`` (an integer option, None when not given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")


def check_choice(option: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


def parse_subset(text: str | None) -> int | str | None:
    """``--subset``: a positive number of examples or ``auto``."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--subset must be a positive number of examples or 'auto', got {text!r}") from None


def points(value: float | None) -> float | None:
    return None if value is None else value / 100


def allowed_drop(value: float | None, metric: str) -> float:
    """A tolerance typed in hundredths of the metric's unit (accuracy points; percent more perplexity) as the
    score drop it allows (:mod:`prunescope.scores`); None: the metric's default (0.5 pts; 5%)."""
    return Score(metric).allowed_or_default(points(value))


def unit_kind(units: str, granularity: str) -> str:
    """``--units`` checked: a one-line UsageError for an unknown kind or ``block`` with channel granularity."""
    check_choice("--units", units, UNIT_KINDS)
    if units != "matrix" and granularity != "weight":
        raise UsageError("--units block groups weight matrices: it applies to --granularity weight")
    return units


def unit_criterion(granularity: str, criterion: str | None, importance: str | None) -> str:
    """``--criterion``, or its older name ``--importance``, checked for the granularity (None: its default)."""
    option = "--importance" if importance is not None and criterion is None else "--criterion"
    return criterion_for(granularity, criterion or importance, option)


def checkpoint_and_data(checkpoint: Path, data: DataChoice, trust_factory: bool, model_arg: list[str] | None):
    saved = load_checkpoint(checkpoint, trust_factory=trust_factory,
                            model_args=assignments("--model-arg", model_arg))
    return saved, load_from_spec(saved.dataset_spec, data_dir=data.data_dir, overrides=data.overrides())
