"""Settings of ``prunescope run``: defaults, a TOML config file, and command-line overrides.

Every field can be set in the config file (``prunescope run --config run.toml``) or on the
command line (which wins). An unknown key or a value of the wrong type is a one-line error
that names the key and the expected type, and so is a setting given for a mode that would
ignore it: :data:`RULES` says which settings apply when, and :func:`check_settings` refuses
an explicit setting that the run would not use.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.io import read_toml


@dataclass(frozen=True)
class RunConfig:
    """Everything ``prunescope run`` does. Sparsities and drops are fractions (0.005 = 0.5 pts; for a language
    model a relative increase of perplexity, 0.05 = 5% higher). None: chosen by the data (:func:`settled`)."""

    # what
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)  # options of the model (factory)
    weights: str | None = None  # starting weights of the dense model: a state dict or .safetensors file
    data: str = "digits"
    data_args: dict[str, Any] = field(default_factory=dict)  # options of the dataset (factory)
    data_dir: str | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    device: str = "auto"
    seed: int = 0
    # dense training
    epochs: int = 30
    optimizer: str = "sgd"
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    # sensitivity scan
    criterion: str | None = None  # magnitude; wanda for a language model
    strategy: str = "adaptive"
    tolerance: float | None = None  # 0.005 (half a point); 0.05 (5% more perplexity) for a language model
    subset: int | None = None
    folds: int | None = None  # the pick is cross-validated on this many folds (0: off); 3, 0 for a language model
    cv: str = "val"  # "val": folds of val, from the one scan; "retrain": one model per fold of train, each scanned
    # pick and compare
    max_drop: float | None = None  # as tolerance
    sparsity: float = 0.9
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    methods: tuple[str, ...] | None = None  # METHODS; LANGUAGE_MODEL_METHODS for a language model
    # recovery
    finetune_epochs: int = 10
    finetune_lr: float = 0.01
    patience: int | None = None
    scratch: tuple[str, ...] = ("E", "B")
    scratch_max_factor: float | None = None
    # how far after fine-tuning: ours and the best baseline fine-tuned at each sparsity, then bisection on val
    recovered: bool = True
    recovered_sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    # "channel": also how many times fewer MACs removing channels reaches after fine-tuning, and its speed-up
    granularity: str = "weight"
    removed_macs: tuple[float, ...] = (0.3, 0.5, 0.67, 0.75)  # fractions of the dense MACs the channel sweep removes
    # one-shot comparison repeated with layer-wise reconstruction ("mask" or "obs"; None: off)
    reconstruct: str | None = "mask"
    calibration: int | None = None
    # one-shot evaluation of pruned models (scan aside): BatchNorm batches, None = 20 with BatchNorm, else 0
    recalibrate_bn: int | None = None
    # optional studies: the hyperparameter study (prunescope hparams' defaults) into OUT/hparams
    hparams: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    """Settings that the run uses only when ``applies(config)``; ``why`` says when, in one clause."""

    settings: tuple[str, ...]
    applies: Callable[[RunConfig], bool]
    why: str


RULES: tuple[Rule, ...] = (
    Rule(("cv",), lambda c: c.folds != 0, "cross-validation is off (folds = 0)"),
    Rule(("finetune_lr", "patience"), lambda c: c.finetune_epochs > 0,
         "fine-tuning is off (finetune_epochs = 0)"),
    Rule(("scratch_max_factor",), lambda c: "B" in c.scratch, "it caps scratch-B, which scratch does not list"),
    Rule(("recovered_sparsities",), lambda c: c.recovered and c.finetune_epochs > 0,
         "the recovered sweep is off (recovered = false or finetune_epochs = 0)"),
    Rule(("calibration",), lambda c: c.reconstruct is not None, "reconstruction is off (reconstruct unset)"),
    Rule(("granularity",), lambda c: c.recovered and c.finetune_epochs > 0,
         "the recovered sweep is off (recovered = false or finetune_epochs = 0)"),
    Rule(("removed_macs",), lambda c: c.granularity == "channel", "the channel sweep is off (granularity = weight)"),
)
"""Which settings apply in which mode. A setting in no rule is always used."""


def check_settings(config: RunConfig, given: Iterable[str] | None = None) -> RunConfig:
    """Refuse a setting in ``given`` (default: every field that differs from its default) that ``config``'s mode
    would ignore, with a one-line reason; return ``config``."""
    defaults = RunConfig()
    if given is None:
        given = [f.name for f in fields(RunConfig) if getattr(config, f.name) != getattr(defaults, f.name)]
    given = set(given)
    for rule in RULES:
        ignored = [name for name in rule.settings if name in given]
        if ignored and not rule.applies(config):
            raise UsageError(f"setting {ignored[0]!r} would be ignored: {rule.why}")
    return config


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


def _coerce(key: str, value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against the field's type; lists become tuples, ints are accepted as floats."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0], where)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"key {key!r} in {where} must be a table of options, got {type(value).__name__}")
        return dict(value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            raise UsageError(f"key {key!r} in {where} must be a list of {item.__name__}, got {type(value).__name__}")
        return tuple(_coerce(key, v, item, where) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise UsageError(f"key {key!r} in {where} must be {_type_name(annotation)}, got {type(value).__name__}")
    return value


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults ← the TOML file at ``path`` (if any) ← ``overrides`` (None values are ignored)."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(RunConfig)
    known = {f.name for f in fields(RunConfig)}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {path} not found")
        loaded = read_toml(path, str(path))
        for key, value in loaded.items():
            if key not in known:
                raise UsageError(f"unknown key {key!r} in {path}; known keys: {', '.join(sorted(known))}")
            values[key] = _coerce(key, value, hints[key], str(path))
    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, value, hints[key], "the command line")
    return check_settings(RunConfig(**values), values)


def validate(config: RunConfig) -> RunConfig:
    """Refuse, before any training, every value the run would otherwise fail on minutes later.

    One-line UsageError naming the setting; returns ``config``. Names of the model and the
    dataset are checked when they are loaded, which the run does before training.
    """
    from prunescope.criteria import CRITERIA
    from prunescope.device import resolve_device
    from prunescope.masks import check_sparsity
    from prunescope.pipeline.compare import METHODS  # the run's stages, imported here: they import much of prunescope
    from prunescope.scan import STRATEGIES
    from prunescope.train import TrainConfig
    from prunescope.train.scratch import SCRATCH_MODES

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UsageError(f"setting {key!r} {what}, got {getattr(config, key)!r}")

    for key in ("lr", "weight_decay", "label_smoothing", "tolerance", "max_drop", "sparsity", "finetune_lr"):
        need(getattr(config, key) is None or math.isfinite(getattr(config, key)), key, "must be a finite number")
    need(config.seed >= 0, "seed", "must be at least 0")
    need(config.weights is None or Path(config.weights).is_file(), "weights",
         "must name an existing state dict or .safetensors file")
    need(config.weight_decay >= 0, "weight_decay", "must be at least 0")
    TrainConfig(epochs=config.epochs, optimizer=config.optimizer, lr=config.lr, batch_size=config.batch_size,
                label_smoothing=config.label_smoothing)  # raises for what dense training would refuse
    need(config.finetune_epochs >= 0, "finetune_epochs", "must be at least 0")
    if config.finetune_epochs > 0:
        TrainConfig(epochs=config.finetune_epochs, optimizer=config.optimizer, lr=config.finetune_lr,
                    batch_size=config.batch_size, label_smoothing=config.label_smoothing)
    need(config.criterion is None or config.criterion in CRITERIA, "criterion", f"must be one of {', '.join(CRITERIA)}")
    need(config.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
    need(config.tolerance is None or config.tolerance > 0, "tolerance",
         "must be a positive fraction (0.005 = half a point; 0.05 = 5% more perplexity)")
    need(config.subset is None or config.subset >= 1, "subset", "must be a positive number of examples")
    need(config.folds is None or config.folds == 0 or config.folds >= 2, "folds", "must be 0 (off) or at least 2")
    need(config.max_drop is None or config.max_drop >= 0, "max_drop", "must be at least 0")
    check_sparsity(config.sparsity, "setting 'sparsity'")
    need(len(config.sparsities) > 0, "sparsities", "must list at least one sparsity")
    for sparsity in config.sparsities:
        need(math.isfinite(sparsity), "sparsities", "must be finite numbers")
        check_sparsity(sparsity, "setting 'sparsities':")
    need(config.methods is None or len(config.methods) > 0, "methods", f"must list some of {', '.join(METHODS)}")
    for method in config.methods or ():
        if method not in METHODS:
            raise UsageError(f"setting 'methods' has unknown method {method!r}: use {', '.join(METHODS)}")
    need(config.patience is None or config.patience >= 1, "patience", "must be at least 1 epoch")
    need(all(str(m).upper().removeprefix("SCRATCH-") in SCRATCH_MODES for m in config.scratch), "scratch",
         "must list E (same epochs) and/or B (same compute)")
    factor = config.scratch_max_factor
    need(factor is None or (math.isfinite(factor) and factor >= 1), "scratch_max_factor", "must be at least 1")
    need(config.recalibrate_bn is None or config.recalibrate_bn >= 0, "recalibrate_bn", "must be at least 0")
    need(config.granularity in ("weight", "channel"), "granularity", "must be weight or channel")
    need(len(config.removed_macs) > 0 and all(math.isfinite(r) and 0 < r < 1 for r in config.removed_macs),
         "removed_macs", "must list fractions of the dense MACs in (0, 1)")
    resolve_device(config.device)
    return config
