"""User dataset factories named ``"package.module:function"``."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

from prunescope.data.build import Pair, RawData, check_labels
from prunescope.data.messages import one_line
from prunescope.data.options import as_int
from prunescope.data.types import Dataset
from prunescope.errors import PrunescopeError, UsageError

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_KEYS = {"train", "val", "test", "input_shape", "num_classes", "name"}


def is_factory(name: str) -> bool:
    return ":" in name


def run_factory(spec: str, options: Mapping[str, Any]) -> tuple[str, RawData]:
    """Import and call the factory with ``options``; return a display name and its data.

    The factory returns a :class:`Dataset`; or a dict with "train", "test", optional "val",
    "input_shape", "num_classes", "name"; or a tuple (train, test) / (train, val, test).
    Each split is an (x, y) pair of tensors or arrays, x (N, *input_shape), y (N,) labels, a
    ``TensorDataset`` of (x, y), or any map-style ``torch.utils.data.Dataset`` of (x, y) items.
    """
    factory = _import(spec)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as error:
        raise UsageError(f"dataset factory {spec!r} does not accept these options: {one_line(error)}") from error
    except ValueError:
        pass  # no signature to check (some builtins); let the call itself decide
    try:
        result = factory(**options)
    except PrunescopeError:
        raise
    except Exception as error:
        raise PrunescopeError(f"dataset factory {spec!r} failed: {one_line(error)}") from error
    return as_raw(spec, result)


def _import(spec: str) -> Callable[..., Any]:
    if not _FACTORY.fullmatch(spec):
        raise UsageError(f"cannot import dataset factory {spec!r}: write it as package.module:function")
    module_name, attribute = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # ImportError, AttributeError, or the module failing to run
        raise UsageError(f"cannot import dataset factory {spec!r}: {one_line(error)}") from error
    if not callable(factory):
        raise UsageError(f"cannot import dataset factory {spec!r}: {attribute} is not callable")
    return factory


def as_raw(spec: str, result: object) -> tuple[str, RawData]:
    """Validate what a factory returned and bring it to RawData (no normalisation)."""
    where = f"dataset factory {spec!r}"
    if isinstance(result, Dataset):
        fields: dict[str, Any] = {
            "train": result.train,
            "val": result.val,
            "test": result.test,
            "num_classes": result.num_classes,
            "name": result.name,
        }
    elif isinstance(result, Mapping):
        fields = dict(result)
        unknown = fields.keys() - _KEYS
        if unknown:
            raise UsageError(f"{where} returned unknown keys {sorted(unknown)}; use {sorted(_KEYS)}")
    elif isinstance(result, (tuple, list)) and len(result) in (2, 3):
        fields = dict(zip(("train", "test") if len(result) == 2 else ("train", "val", "test"), result, strict=True))
    else:
        raise UsageError(
            f"{where} returned {type(result).__name__}; return a Dataset, a dict with "
            "train/test (and val) (x, y) pairs, or a (train, test) / (train, val, test) tuple"
        )
    for required in ("train", "test"):
        if fields.get(required) is None:
            raise UsageError(f"{where} returned no {required} split")
    splits = {
        part: _pair(f"{where}, {part} split", fields[part])
        for part in ("train", "val", "test")
        if fields.get(part) is not None
    }
    shape = splits["train"][0].shape[1:]
    if "input_shape" in fields and tuple(fields["input_shape"]) != shape:
        raise UsageError(
            f"{where}: input_shape {tuple(fields['input_shape'])} does not match "
            f"train x of shape {splits['train'][0].shape}"
        )
    for part, (x, _) in splits.items():
        if x.shape[1:] != shape:
            raise UsageError(f"{where}: {part} x has shape {x.shape} but train x has {splits['train'][0].shape}")
    num_classes = fields.get("num_classes")
    if num_classes is None:
        num_classes = 1 + max(int(y.max(initial=0)) for _, y in splits.values())
    num_classes = as_int(f"{where}: num_classes", num_classes, minimum=1)
    for part, (_, y) in splits.items():
        check_labels(y, num_classes, f"{where}, {part} split")
    raw = RawData(
        train=splits["train"], test=splits["test"], val=splits.get("val"), num_classes=num_classes, normalise=None
    )
    return str(fields.get("name") or spec), raw


def _pair(where: str, split: object) -> Pair:
    """A split as numpy: x (N, ...), y (N,) integers.

    ``split`` is an (x, y) pair of tensors or arrays, a Split, a ``TensorDataset`` of (x, y),
    or any map-style ``torch.utils.data.Dataset`` whose items are (x, y) with y an integer
    (read once, item by item, and stacked).
    """
    if isinstance(split, TensorDataset):
        pair: object = split.tensors
        if len(split.tensors) != 2:
            raise UsageError(f"{where}: a TensorDataset must hold two tensors (x, y), it holds {len(split.tensors)}")
    elif hasattr(split, "x") and hasattr(split, "y"):
        pair = (split.x, split.y)
    elif isinstance(split, TorchDataset) or (hasattr(split, "__getitem__") and hasattr(split, "__len__")
                                             and not isinstance(split, (tuple, list))):
        pair = _stacked(where, split)
    else:
        pair = split
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise UsageError(
            f"{where}: expected an (x, y) pair, a TensorDataset or a map-style Dataset of (x, y) items, "
            f"got {type(split).__name__}"
        )
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in pair)
    if x.ndim < 2 or len(x) != len(y):
        raise UsageError(f"{where}: x must be (N, ...) with one row per label; got x {x.shape}, y {y.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{where}: x must be numeric, got dtype {x.dtype}")
    return x, y


def _stacked(where: str, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x, y) item of a map-style dataset, stacked: x (N, ...), y (N,)."""
    try:
        count = len(dataset)
        items = [dataset[i] for i in range(count)]
    except Exception as error:  # the user's __getitem__ failing is their input error
        raise UsageError(f"{where}: reading the dataset item by item failed: {one_line(error)}") from error
    if not items:
        raise UsageError(f"{where}: the dataset is empty")
    if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
        raise UsageError(f"{where}: items must be (x, y) pairs, item 0 is a {type(items[0]).__name__}")
    try:
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    except (RuntimeError, TypeError, ValueError) as error:
        reason = one_line(error)
        raise UsageError(f"{where}: items do not stack into x (N, ...) and integer y (N,): {reason}") from error
    return x, y
