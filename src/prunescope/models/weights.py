"""Starting weights from a file (``--weights FILE``): a state dict read as tensors only, checked against the model.

A file is a ``torch.save`` state dict (read with ``torch.load(weights_only=True)``, so it can
never run code), a dict holding one under ``"state_dict"`` or ``"model"`` (as training scripts
and timm save them; a prunescope checkpoint too), or a ``.safetensors`` file. It must fit the
model exactly, except that a tied tensor (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``)
may be given under one of its names only, as ``save_pretrained`` writes it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from prunescope.errors import UsageError

_NESTED = ("state_dict", "model")  # where a training script or a prunescope checkpoint keeps the state dict


def first_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                   source: str = "the checkpoint") -> str | None:
    """Describe the first key where state dict ``found`` (read from ``source``) does not fit ``expected``, or None."""
    for key, tensor in expected.items():
        if key not in found:
            return f"{key!r} (shape {tuple(tensor.shape)}) is missing from {source}"
        if found[key].shape != tensor.shape:
            return f"{key!r} has shape {tuple(found[key].shape)} in {source} but {tuple(tensor.shape)} in the model"
    unexpected = next((key for key in found if key not in expected), None)
    if unexpected is not None:
        return f"{source} has {unexpected!r} (shape {tuple(found[unexpected].shape)}), which the model lacks"
    return None


def _one_line(error: BaseException) -> str:
    return (f"{type(error).__name__}: {error}".strip().splitlines() or [type(error).__name__])[0]


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (CPU tensors); a one-line UsageError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--weights {path} does not exist: give a state dict (.pt) or a .safetensors file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError(f"--weights {path} needs safetensors: pip install 'prunescope[hf]'") from None
        try:
            payload: object = load_file(str(path), device="cpu")
        except Exception as error:  # a damaged header surfaces as SafetensorError, OSError, ...
            raise UsageError(f"--weights {path} is not a readable safetensors file ({_one_line(error)})") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            if "Unsupported global" in str(error):  # a pickled object, not a tensor
                raise UsageError(f"--weights {path} holds Python objects that are unsafe to load, so it was refused: "
                                 "save the model's state_dict() instead") from None
            raise UsageError(f"--weights {path} is not a readable torch file ({_one_line(error)}): give a state "
                             "dict saved with torch.save, or a .safetensors file") from None
    if isinstance(payload, dict):
        payload = next((payload[key] for key in _NESTED if isinstance(payload.get(key), dict)), payload)
    if not isinstance(payload, dict) or not payload or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise UsageError(f"--weights {path} holds no state dict (names to tensors): save the model's state_dict()")
    return payload


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` (in place, returned); a one-line UsageError naming the first
    key that does not fit."""
    state = dict(read_weights(path))
    expected = model.state_dict()
    # Tied tensors appear under every name in model.state_dict(); a file may hold one of them.
    by_storage: dict[tuple, list[str]] = {}
    for key, tensor in expected.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        by_storage.setdefault(where, []).append(key)
    for names in by_storage.values():
        given = next((name for name in names if name in state), None)
        for name in names:
            if given is not None and name not in state:
                state[name] = state[given]
    mismatch = first_mismatch(expected, state, "the file")
    if mismatch:
        raise UsageError(f"--weights {path} does not fit the model: {mismatch}")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise UsageError(f"--weights {path} holds NaN or infinite values in {bad!r}")
    model.load_state_dict(state)
    return model
