"""Hand a model trained in Python to the command line: ``prunescope.wrap(model, data, out)``.

The CLI rebuilds every model from a spec (a factory and its arguments) and loads weights into
it; it never unpickles a module. ``wrap`` therefore finds the factory that rebuilds ``model``
(its own class by default), checks that the rebuilt model computes exactly what ``model``
computes, and writes ``out/model.pt``; data given as tensors or datasets is written beside it
as ``out/data.pt`` (tensors only), which the built-in dataset ``saved`` reads back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunescope.checkpoint import save_checkpoint
from prunescope.data import Dataset, load_dataset
from prunescope.data.factory import as_raw
from prunescope.data.saved import write_saved
from prunescope.errors import UsageError
from prunescope.models import build_from_spec, model_spec
from prunescope.models.adapters import is_transformers_model, logits

DATA_FILE = "data.pt"
MODEL_FILE = "model.pt"


def wrap(
    model: nn.Module,
    data: Any,
    out: str | os.PathLike[str],
    *,
    factory: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` and its data as a checkpoint every prunescope command takes; returns its path.

    model: a trained ``nn.Module`` (left unchanged).
    data: a built-in dataset name (``"digits"``) or a :class:`~prunescope.data.Dataset`, or the
        splits themselves, as a dataset factory returns them: ``(train, test)``,
        ``(train, val, test)`` or a dict with those keys, each split an ``(x, y)`` pair of
        tensors, a ``TensorDataset`` or a map-style ``Dataset`` of ``(x, y)`` items. Splits are
        written to ``out/data.pt`` as given (no normalisation); without a val split, val is
        carved from train (10%, stratified, seed 0).
    out: directory for ``model.pt`` (and ``data.pt``).
    factory: ``"package.module:function"`` that builds the architecture, called like any model
        factory (keyword arguments, see :func:`prunescope.models.factory_arguments`). Default:
        the model's own class, ``"<module>:<class>"``.
    model_args: keyword arguments for the factory (what ``--model-arg`` would pass).

    Raises UsageError (one line) when the class cannot be imported by name (defined in
    ``__main__`` or inside a function), when the factory's model does not take ``model``'s
    weights, or when it computes something else on the val inputs.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"wrap needs a torch.nn.Module, got {type(model).__name__}")
    out = Path(out)
    if factory is None and is_transformers_model(model):
        raise UsageError(f"a transformers {type(model).__name__} is rebuilt from its configuration: save it with "
                         "model.save_pretrained(DIR) and pass factory='hf:DIR'")
    dataset = _dataset(data, out)
    name = factory or _class_path(model)
    spec = model_spec(name, dataset.input_shape, dataset.num_classes, **dict(model_args or {}))
    rebuilt = build_from_spec(spec)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise UsageError(f"{name} does not build a model that takes these weights ({first[-1].strip()}): pass "
                         "model_args= with the arguments the model was built with, or factory=") from None
    _check_same_outputs(model, rebuilt, dataset, name)
    return save_checkpoint(out / MODEL_FILE, model, spec, dataset.spec, meta={"wrapped": name})


def _dataset(data: Any, out: Path) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_dataset(data)
    _, raw = as_raw("wrap(data=...)", data)
    path = write_saved(out / DATA_FILE, raw)
    return load_dataset("saved", path=str(path.resolve()))


def _class_path(model: nn.Module) -> str:
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise UsageError(f"{cls.__qualname__} is defined in a script or a function, so the CLI cannot import it: "
                         "move it into a module, or pass factory='package.module:function'")
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_same_outputs(model: nn.Module, rebuilt: nn.Module, dataset: Dataset, name: str) -> None:
    """The rebuilt model must compute what ``model`` computes (eval mode) on up to 64 val inputs."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    inputs = dataset.val.x[:64].to(device)
    training = model.training
    model.eval()
    rebuilt.to(device).eval()
    try:
        with torch.no_grad():
            expected, found = logits(model, inputs), logits(rebuilt, inputs)  # outputs read as prunescope reads them
    finally:
        model.train(training)
    if not torch.allclose(expected, found, rtol=1e-5, atol=1e-6):
        raise UsageError(f"the model {name} rebuilds computes other outputs than the one given (it keeps state "
                         "outside its parameters and buffers?): pass factory= that rebuilds it exactly")
