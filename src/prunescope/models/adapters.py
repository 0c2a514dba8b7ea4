"""Models whose outputs are not a tensor of logits: read them by task, and feed token models their ids.

prunescope calls a model as ``model(x)`` and reads a tensor of logits. Models of the
ecosystem return more: a ``transformers`` ``ModelOutput`` (``.logits``, ``.past_key_values``…),
a dict, or a tuple (torchvision's Inception in training mode). :func:`as_logits` makes such a
model return its logits, by a forward hook on the model itself rather than a wrapping module,
so that every parameter keeps the name its library gives it (``transformer.h.0.attn.c_attn.weight``,
what ``--include`` / ``--exclude`` globs and the library's own checkpoints use).

A ``transformers`` text model (``main_input_name == "input_ids"``) also gets a forward pre-hook
that casts floating inputs to token ids (int64): prunescope keeps inputs as float32 tensors and
builds dry-run inputs (MAC counting, timing) in the model's floating dtype. Token ids up to 2²⁴
are exact in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunescope.errors import UsageError


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's ``output``: a tensor itself, ``["logits"]`` of a dict (a ``ModelOutput`` is one),
    ``.logits`` of an object, the first element of a tuple; a one-line UsageError otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return output["logits"]
        raise UsageError(f"the model returned a {type(output).__name__} without logits (keys: "
                         f"{', '.join(map(str, output)) or 'none'}): use a model with a task head "
                         "(e.g. ...ForSequenceClassification)")
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UsageError(f"the model returned a {type(output).__name__}, not logits: return a tensor, a dict or object "
                     "with logits, or a tuple whose first element is the logits")


def _logits_hook(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
    return logits_of(output)


def _token_ids_hook(_module: nn.Module, inputs: tuple) -> tuple | None:
    if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].is_floating_point():
        return (inputs[0].long(), *inputs[1:])
    return None  # unchanged


def takes_token_ids(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model whose first input is token ids."""
    return getattr(model, "main_input_name", None) == "input_ids"


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model``'s class comes from ``transformers`` (by its module's name: transformers is not imported)."""
    return type(model).__module__.split(".")[0] == "transformers"


def as_logits(model: nn.Module) -> nn.Module:
    """Make ``model`` (in place; returned) return the logits of whatever it returns (:func:`logits_of`), and a
    ``transformers`` text model take float inputs as token ids. Idempotent; names, state dict and
    ``deepcopy`` are unchanged (module-level hook functions)."""
    if _logits_hook not in model._forward_hooks.values():
        model.register_forward_hook(_logits_hook)
    if takes_token_ids(model) and _token_ids_hook not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_token_ids_hook)
    return model


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What an adapted ``model`` returns on ``x``, for a model that may not be adapted (``model`` is unchanged)."""
    if takes_token_ids(model) and x.is_floating_point():
        x = x.long()
    return logits_of(model(x))
