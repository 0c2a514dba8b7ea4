"""Saving and loading prunescope checkpoints.

A checkpoint is one ``torch.save`` file holding a dict::

    {"format": "prunescope-checkpoint", "version": 1,
     "model_spec": ..., "dataset_spec": ..., "meta": ...,   # plain JSON-like data
     "state_dict": {name: tensor}, "extra_state": {...}}     # tensors allowed

The model is rebuilt from ``model_spec`` (see :mod:`prunescope.models`) and the state dict
loaded into it, so files are always read with ``torch.load(weights_only=True)``: a checkpoint
can never run code. Nor can the specs: a ``package.module:function`` factory named in them is
imported only when the user trusts it (see :mod:`prunescope.trust`). Unstructured pruning
masks are baked into the weights when saving, so every checkpoint loads into the plain,
unpruned architecture.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunescope.errors import PrunescopeError, UsageError
from prunescope.io import atomic_write
from prunescope.models.weights import first_mismatch
from prunescope.structured.find import rebuild
from prunescope.trust import Trust, TrustFactory, check_spec

FORMAT = "prunescope-checkpoint"
VERSION = 1
_REQUIRED_KEYS = ("model_spec", "dataset_spec", "meta", "state_dict", "extra_state")


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``model`` is built from ``model_spec``, state loaded, in eval mode."""

    model: nn.Module
    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]
    meta: dict[str, Any]


# --------------------------------------------------------------------------- saving


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as the unpruned architecture names it, without touching ``model``.

    ``torch.nn.utils.prune`` replaces ``x.weight`` by ``x.weight_orig`` and a ``x.weight_mask``
    buffer: these become ``x.weight = weight_orig * weight_mask``. ``torch.nn.utils.parametrize``
    stores ``x.parametrizations.weight.original`` (and the parametrization's own state): these
    become ``x.weight`` as the parametrization computes it.
    """
    state = model.state_dict()
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if "parametrizations" in parts:
            at = parts.index("parametrizations")
            tensor_name = parts[at + 1]
            plain_key = ".".join([*parts[:at], tensor_name])
            if plain_key not in plain:  # one entry per parametrized tensor, however many keys it has
                owner = model.get_submodule(".".join(parts[:at]))
                plain[plain_key] = getattr(owner, tensor_name).detach()
        elif key.endswith("_orig") and f"{key[:-5]}_mask" in state:
            plain[key[:-5]] = value * state[f"{key[:-5]}_mask"]
        elif not (key.endswith("_mask") and f"{key[:-5]}_orig" in state):
            plain[key] = value
    return plain


def _plain_data(value: Any, where: str, *, tensors: bool) -> Any:
    """``value`` checked to load under ``weights_only=True``.

    JSON-like mode (``tensors=False``, for specs and meta) turns tuples into lists and numpy
    scalars into Python numbers. Tensor mode (for extra_state) also keeps tensors and tuples.
    Raises TypeError naming the offending entry: that is a bug in the caller, not user input.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        for key in value:
            if not (key is None or isinstance(key, (bool, int, float, str))):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use strings or numbers")
        return {k: _plain_data(v, f"{where}[{k!r}]", tensors=tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain_data(v, f"{where}[{i}]", tensors=tensors) for i, v in enumerate(value)]
        return tuple(items) if tensors and type(value) is tuple else items
    if tensors and isinstance(value, torch.Tensor):
        return value.detach()
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot store; convert it to plain data")


def _build(spec: dict[str, Any]) -> nn.Module:
    """Build a model from its spec without advancing the global RNG (saving mid-training must
    not change what the training run does next)."""
    with torch.random.fork_rng(devices=[]):
        return rebuild(spec)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    model_spec: dict[str, Any],
    dataset_spec: dict[str, Any],
    meta: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (masks baked in) with its specs atomically to ``path``; returns the path.

    ``meta`` is JSON-like (tuples become lists); ``extra_state`` (optimizer / scheduler state
    for resuming) may also hold tensors. Raises PrunescopeError if the state dict does not fit
    the model ``model_spec`` builds (e.g. a structurally pruned model), since such a file could
    never be loaded.
    """
    path = Path(path)
    state = plain_state_dict(model)
    mismatch = first_mismatch(_build(model_spec).state_dict(), state)
    if mismatch:
        raise PrunescopeError(
            f"cannot save checkpoint {path}: the model does not match its spec {model_spec.get('name')!r}: {mismatch}"
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_spec": _plain_data(model_spec, "model_spec", tensors=False),
        "dataset_spec": _plain_data(dataset_spec, "dataset_spec", tensors=False),
        "meta": _plain_data(meta or {}, "meta", tensors=False),
        "state_dict": state,
        "extra_state": _plain_data(extra_state or {}, "extra_state", tensors=True),
    }
    # Atomic: a crash leaves either the old checkpoint or the new one, never half of one.
    atomic_write(path, lambda file: torch.save(payload, file))
    return path


# --------------------------------------------------------------------------- loading


def _read(path: str | os.PathLike[str], map_location: Any) -> dict[str, Any]:
    """The payload dict of checkpoint ``path``; UsageError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist: check the path, or train one with prunescope train")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of non-torch files
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged file surfaces as any of OSError, KeyError, EOFError, ...
        if "Weights only load failed" in str(e):
            raise UsageError(
                f"checkpoint {path} holds Python objects that are unsafe to load, so it was refused; "
                "it is not a prunescope checkpoint: re-create it with prunescope train"
            ) from e
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise UsageError(
            f"checkpoint {path} is not a readable torch file (corrupt or truncated? {reason}); "
            "re-create it with prunescope train"
        ) from e
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise UsageError(
                f"checkpoint {path} has format version {payload.get('version')!r}, but this prunescope "
                f"reads version {VERSION}: use the prunescope version that wrote it"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in payload]
        if missing:
            raise UsageError(f"checkpoint {path} is damaged (no {missing[0]!r}): re-create it with prunescope train")
        wrong = next((key for key in _REQUIRED_KEYS if not isinstance(payload[key], dict)), None)
        if wrong is not None:
            raise UsageError(
                f"checkpoint {path} is damaged ({wrong!r} is a {type(payload[wrong]).__name__}, not a dict): "
                "re-create it with prunescope train"
            )
        return payload
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UsageError(
            f"{path} is a bare state dict, not a prunescope checkpoint; "
            "save with prunescope train or pass --model/--dataset"
        )
    raise UsageError(
        f"{path} is a torch file but not a prunescope checkpoint (it holds a {type(payload).__name__}); "
        "save with prunescope train"
    )


def _first_non_finite(state: dict[str, Any]) -> str | None:
    """The first floating-point tensor of ``state`` holding NaN or ±inf, or None."""
    for key, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: Any = "cpu",
    trust_factory: TrustFactory | Trust = False,
    model_args: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Load checkpoint ``path``: rebuild the model from its spec, load the weights, eval mode.

    ``model_args`` (``--model-arg``) replace the stored factory arguments of the same name; the
    returned spec holds them, so a model saved from it rebuilds the same way.

    ``map_location`` goes to ``torch.load``; when it names a device the model is moved there too.
    A model or dataset factory (``package.module:function``) named in the file is imported only
    if ``trust_factory`` covers it: True for any (said on stderr), or a collection of the names
    the caller vouches for (see :mod:`prunescope.trust`).

    Raises UsageError (naming the path) for missing, damaged or foreign files, untrusted
    factories, unknown models, NaN or infinite weights and state dicts that do not fit the model.
    """
    payload = _read(path, map_location)
    trust = Trust.of(trust_factory)
    check_spec(payload["model_spec"], "model", f"checkpoint {path}", trust)
    check_spec(payload["dataset_spec"], "dataset", f"checkpoint {path}", trust)
    spec = payload["model_spec"]
    if model_args:
        spec = {**spec, "kwargs": {**spec.get("kwargs", {}), **model_args}}
    try:
        model = _build(spec)
    except UsageError as e:
        raise UsageError(f"checkpoint {path}: {e}") from e
    state = payload["state_dict"]
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch:
        raise UsageError(
            f"checkpoint {path} does not fit model {spec.get('name')!r}: {mismatch}; "
            "re-create the checkpoint with prunescope train"
        )
    if (bad := _first_non_finite(state)) is not None:
        raise UsageError(f"checkpoint {path} holds NaN or infinite values in {bad!r}: re-create it, e.g. train again")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model=model, model_spec=spec, dataset_spec=payload["dataset_spec"], meta=payload["meta"])


def load_extra_state(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """The ``extra_state`` (optimizer / scheduler state …) saved with checkpoint ``path``."""
    return _read(path, map_location)["extra_state"]
