"""Dataset names, option checking and the public load functions."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prunescope.data import cifar, digits, factory, idx, saved, synthetic, text
from prunescope.data.build import RawData, assemble
from prunescope.data.options import as_float, as_int
from prunescope.data.types import Dataset
from prunescope.errors import UsageError

DATA_DIR_ENV = "PRUNESCOPE_DATA_DIR"
_COMMON_OPTIONS = ("limit_train", "limit_val")


@dataclass(frozen=True)
class DatasetInfo:
    """One built-in dataset, as ``prunescope datasets`` lists it."""

    name: str
    description: str
    needs_data_dir: bool


@dataclass(frozen=True)
class _Builtin:
    info: DatasetInfo
    # Called as read(data_dir, **options) when info.needs_data_dir, else read(**options);
    # its keyword-only parameters are the dataset's options.
    read: Callable[..., RawData]


def _builtin(name: str, description: str, read: Callable[..., RawData], needs_data_dir: bool) -> _Builtin:
    return _Builtin(DatasetInfo(name, description, needs_data_dir), read)


_BUILTINS = {
    b.info.name: b
    for b in (
        _builtin(
            "digits",
            "scikit-learn 8x8 digits, 1,797 images, 10 classes (bundled, 20% fixed test split)",
            digits.read_digits,
            needs_data_dir=False,
        ),
        _builtin(
            "mnist",
            "MNIST handwritten digits, 28x28 grey, 60,000 train / 10,000 test (IDX files)",
            partial(idx.read_mnist_like, "mnist"),
            needs_data_dir=True,
        ),
        _builtin(
            "fashion-mnist",
            "Fashion-MNIST clothing, 28x28 grey, 60,000 train / 10,000 test (IDX files)",
            partial(idx.read_mnist_like, "fashion-mnist"),
            needs_data_dir=True,
        ),
        _builtin(
            "cifar10",
            "CIFAR-10, 32x32 colour, 50,000 train / 10,000 test (python pickle batches)",
            cifar.read_cifar10,
            needs_data_dir=True,
        ),
        _builtin(
            "saved",
            "splits saved from Python by prunescope.wrap; option path (the data.pt file)",
            saved.read_saved,
            needs_data_dir=False,
        ),
        _builtin(
            "synthetic",
            "generated Gaussian classes; options n_train, n_test, input_shape, num_classes, noise, data_seed",
            synthetic.read_synthetic,
            needs_data_dir=False,
        ),
    )
}


_PYTHON_SOURCE = DatasetInfo(
    text.PYTHON_SOURCE,
    "language modelling on this Python's standard library sources (.py files, ~600 documents; options block, "
    "tokenizer, max_documents); any text file or folder: text:PATH",
    needs_data_dir=False,
)


def available_datasets() -> list[DatasetInfo]:
    """The built-in datasets; any ``"package.module:function"`` factory and any ``text:PATH`` work as well."""
    return [*(b.info for b in _BUILTINS.values()), _PYTHON_SOURCE]


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load a built-in dataset or call a ``"package.module:function"`` factory.

    ``val`` is carved from the original train data (stratified, ``seed``); ``test`` is the
    dataset's own. ``data_dir`` defaults to $PRUNESCOPE_DATA_DIR. ``limit_train`` (any
    dataset) keeps a stratified subset of that many train samples, ``limit_val`` of val (after
    carving it); test is never cut.
    Bad names, options, values or files raise UsageError.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"dataset name must be a non-empty string, got {name!r}")
    val_fraction = as_float("val_fraction", val_fraction, low=0.0, high=1.0, open_low=True)
    seed = as_int("seed", seed, minimum=0)
    limits = {key: options.pop(key, None) for key in _COMMON_OPTIONS}
    limits = {key: as_int(key, value, minimum=1) for key, value in limits.items() if value is not None}
    spec: dict[str, Any] = {"name": name, "val_fraction": val_fraction, "seed": seed, **options, **limits}
    if text.is_text(name) or name == text.PYTHON_SOURCE:
        return _load_text(name, val_fraction, seed, options, limits, spec)
    if factory.is_factory(name):
        display_name, raw = factory.run_factory(name, options)
    else:
        display_name, raw, folder = _read_builtin(name, data_dir, options)
        spec["name"] = display_name
        if folder is not None:
            spec["data_dir"] = str(folder)
    _check_json(spec)
    return assemble(display_name, raw, val_fraction=val_fraction, seed=seed, spec=spec, **limits)


def load_from_spec(
    spec: Mapping[str, Any],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Dataset:
    """Rebuild the dataset a ``Dataset.spec`` describes, with ``overrides`` replacing its options.

    An explicit ``data_dir`` wins; then the stored one, unless it no longer exists and
    $PRUNESCOPE_DATA_DIR is set (e.g. a checkpoint moved to another machine). ``overrides``
    (``--data-arg``, ``--limit-train``, ``--limit-val``) replace stored options of the same name.
    """
    arguments = dict(spec) | dict(overrides or {})
    stored = arguments.pop("data_dir", None)
    if "name" not in arguments:
        raise UsageError("dataset spec has no 'name'; it does not come from prunescope")
    if data_dir is None and stored is not None and (Path(stored).is_dir() or not os.environ.get(DATA_DIR_ENV)):
        data_dir = stored
    return load_dataset(**arguments, data_dir=data_dir)


def _load_text(name: str, val_fraction: float, seed: int, options: dict[str, Any], limits: dict[str, int],
               spec: dict[str, Any]) -> Dataset:
    """A language-model dataset: ``text:PATH`` (stored with its absolute path) or the built-in ``python-source``."""
    allowed = {p.name for p in inspect.signature(text.load_text).parameters.values()
               if p.kind is p.KEYWORD_ONLY} - {"spec", "skip", "seed", "val_fraction", *_COMMON_OPTIONS}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"{name}: unknown option {', '.join(unknown)}; valid options: {', '.join(sorted(allowed))}")
    if name == text.PYTHON_SOURCE:
        path, skip, options = text.python_source(), text.PYTHON_SOURCE_SKIP, {"suffixes": (".py",)} | options
    else:
        path, skip = Path(name[len(text.PREFIX):]).expanduser().resolve(), ()
        spec["name"] = f"{text.PREFIX}{path}"
    _check_json(spec)
    return text.load_text(text.PREFIX + str(path) if name != text.PYTHON_SOURCE else name, path, seed=seed,
                          val_fraction=val_fraction, spec=spec, skip=skip, **options, **limits)


def describe_dataset(ds: Dataset) -> dict[str, Any]:
    """Name, input shape, class count and split sizes, JSON-ready, for ``prunescope datasets``."""
    return {
        "name": ds.name,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
    }


def _read_builtin(
    name: str, data_dir: str | os.PathLike[str] | None, options: dict[str, Any]
) -> tuple[str, RawData, Path | None]:
    """Canonical name, data and the data folder used (None if the dataset needs none)."""
    canonical = name.strip().lower().replace("_", "-")
    builtin = _BUILTINS.get(canonical)
    if builtin is None:
        raise UsageError(
            f"unknown dataset {name!r}; use one of {', '.join(_BUILTINS)} "
            "or a factory written as package.module:function"
        )
    allowed = [p.name for p in inspect.signature(builtin.read).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join([*allowed, *_COMMON_OPTIONS])
        raise UsageError(f"{canonical}: unknown option {', '.join(unknown)}; valid options: {valid}")
    if not builtin.info.needs_data_dir:
        return canonical, builtin.read(**options), None
    folder = _data_folder(canonical, data_dir)
    return canonical, builtin.read(folder, **options), folder


def _data_folder(name: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The explicit data_dir, else $PRUNESCOPE_DATA_DIR, as an absolute existing folder."""
    origin = ""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir, origin = os.environ[DATA_DIR_ENV], f" (from {DATA_DIR_ENV})"
    if data_dir is None:
        return None  # the reader explains what to pass
    folder = Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(
            f"{name}: data folder {folder}{origin} does not exist or is not a folder; "
            f"pass --data-dir with an existing folder or set {DATA_DIR_ENV}"
        )
    return folder


def _check_json(spec: dict[str, Any]) -> None:
    """Specs go into checkpoints as JSON; tuples become lists, anything else must already fit."""
    for key, value in spec.items():
        if isinstance(value, tuple):
            spec[key] = list(value)
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as error:
        raise UsageError(f"dataset options must be JSON values (str, number, list, ...): {error}") from error
