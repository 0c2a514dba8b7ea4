"""Models by name: a zoo name, a user factory ``"package.module:function"`` or a model source of the ecosystem
(``hf:DIR``, ``timm:NAME``, ``torchvision:NAME``, see :mod:`prunescope.models.hub`), and the spec that rebuilds one.

A user factory is called with keyword arguments: the user's options plus whatever of
``input_shape`` / ``in_channels`` / ``in_features`` / ``num_classes`` (or a common alias) its
signature asks for (:func:`factory_arguments`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunescope.errors import PrunescopeError, UsageError
from prunescope.models.adapters import as_logits, is_transformers_model
from prunescope.models.hub import build_hub, canonical
from prunescope.models.zoo import ANY_SHAPE, SEQUENCES, ZOO
from prunescope.trust import is_hub

_FIXED_ARGS = ("input_shape", "num_classes")


# How a factory may spell what prunescope knows about the data, and how each is derived from
# (input_shape, num_classes). Features are the flattened input (what a first nn.Linear sees).
_ALIASES: dict[str, Callable[[tuple[int, ...], int], Any]] = {
    **dict.fromkeys(("input_shape", "in_shape", "shape"), lambda shape, n: shape),
    **dict.fromkeys(("in_channels", "input_channels", "num_channels", "channels", "in_chans"),
                    lambda shape, n: shape[0]),
    **dict.fromkeys(("in_features", "num_features", "n_features", "input_dim", "in_dim", "features"),
                    lambda shape, n: int(torch.Size(shape).numel())),
    **dict.fromkeys(("num_classes", "n_classes", "classes", "nclasses", "num_outputs", "n_outputs",
                     "out_features", "output_dim", "out_dim", "num_labels"), lambda shape, n: n),
}


def _import_factory(name: str) -> Callable[..., nn.Module]:
    """Resolve ``"package.module:function"`` (the function part may be dotted)."""
    module_name, _, attr_path = name.partition(":")
    if not module_name or not attr_path:
        raise UsageError(f"cannot import model factory {name!r}: write it as 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except Exception as e:  # anything the user's module raises while importing is their input error
        raise UsageError(f"cannot import model factory {name!r}: {type(e).__name__}: {e}") from e
    if not callable(target):
        raise UsageError(f"cannot import model factory {name!r}: it is a {type(target).__name__}, not a function")
    return target


def _resolve(name: str) -> Callable[..., nn.Module]:
    """The builder for a zoo name or user factory; raises UsageError for unknown names."""
    if ":" in name:
        return _import_factory(name)
    if name not in ZOO:
        raise UsageError(
            f"unknown model {name!r}: choose one of {', '.join(ZOO)}, or give a factory as 'package.module:function'"
        )
    return ZOO[name][0]


def _what(name: str) -> str:
    return f"model factory {name!r}" if ":" in name else f"model {name!r}"


def factory_arguments(
    name: str, builder: Callable[..., nn.Module], shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments ``builder`` is called with: ``kwargs`` plus what it asks of the data.

    A parameter named like ``input_shape``, ``in_channels``, ``in_features`` or ``num_classes``
    (see ``_ALIASES``) and not given in ``kwargs`` gets its value from the data; a factory
    with ``**kwargs`` gets ``input_shape=`` and ``num_classes=``. Raises a one-line UsageError
    for an option the factory does not take, or a required parameter nobody can supply.
    """
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # builtins without a signature: the classic call
        return {"input_shape": shape, "num_classes": num_classes, **kwargs}
    parameters = signature.parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [p for p, v in parameters.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    if not open_ended:
        options = [p for p in named if p not in _ALIASES]
        unknown = sorted(set(kwargs) - set(named))
        if unknown:
            accepted = f"its options are {', '.join(options)}" if options else "it takes no options"
            raise UsageError(f"{_what(name)} has no option {unknown[0]!r}: {accepted}")
    call = dict(kwargs)
    for parameter in named:
        if parameter not in call and parameter in _ALIASES:
            call[parameter] = _ALIASES[parameter](shape, num_classes)
    if open_ended:
        call = {"input_shape": shape, "num_classes": num_classes} | call
    missing = [p for p in named if p not in call and parameters[p].default is inspect.Parameter.empty]
    positional = [p for p, v in parameters.items() if v.kind is v.POSITIONAL_ONLY and v.default is v.empty]
    if missing or positional:
        needed = (missing or positional)[0]
        raise UsageError(
            f"{_what(name)} needs argument {needed!r}, which prunescope cannot derive from the data "
            f"(it supplies {', '.join(sorted(_ALIASES))}): pass --model-arg {needed}=VALUE"
        )
    return call


def _check_shape(name: str, input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise UsageError(f"input shape must be positive integers, got {shape!r}")
    if name in ZOO and name not in (*ANY_SHAPE, *SEQUENCES) and len(shape) != 3:
        raise UsageError(
            f"model {name!r} needs an image input shape (C, H, W), got {shape!r}: "
            f"for flat (tabular) inputs use {' or '.join(ANY_SHAPE)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"number of classes must be a positive integer, got {num_classes!r}")
    return shape


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build zoo model or user factory ``name`` for inputs (N, *input_shape) → (N, num_classes).

    A user factory is called with keyword arguments only (see :func:`factory_arguments`).
    Deterministic given ``torch.manual_seed``. Raises UsageError for unknown names or
    options, bad shapes and factories that cannot be imported; PrunescopeError, naming the
    factory, for one that raises or returns something other than an nn.Module. A model of
    the ecosystem comes with the weights its source holds (an ``hf:`` directory's), and a
    ``transformers`` model (also one a factory returns) is adapted to return its logits
    (:func:`prunescope.models.adapters.as_logits`).
    """
    shape = _check_shape(name, input_shape, num_classes)
    if is_hub(name):
        return build_hub(name, shape, num_classes, kwargs)
    builder = _resolve(name)
    call = factory_arguments(name, builder, shape, num_classes, kwargs)
    try:
        model = builder(**call)
    except PrunescopeError:
        raise
    except Exception as e:  # the user's code failing is reported as one line naming it
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise PrunescopeError(f"{_what(name)} failed when called with {_shown(call)}: {reason}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"{_what(name)} returned a {type(model).__name__}, not a torch.nn.Module")
    return as_logits(model) if is_transformers_model(model) else model


def _shown(call: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in call.items()) or "no arguments"


def _json_like(value: Any, where: str) -> Any:
    """``value`` with tuples turned into lists; UsageError for anything JSON cannot hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_like(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_like(v, where) for k, v in value.items()}
    raise UsageError(f"model option {where} must be plain data (numbers, strings, lists), got {value!r}")


def model_spec(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """JSON-serialisable ``{"name", "input_shape", "num_classes", "kwargs"}`` for :func:`build_from_spec`.

    Checks the name and option names (without building) so a bad spec fails early; an
    ``hf:`` directory is recorded as an absolute path.
    """
    shape = _check_shape(name, input_shape, num_classes)
    if is_hub(name):
        name = canonical(name, kwargs)
    else:
        factory_arguments(name, _resolve(name), shape, num_classes, kwargs)
    return {
        "name": name,
        "input_shape": list(shape),
        "num_classes": num_classes,
        "kwargs": {key: _json_like(value, key) for key, value in kwargs.items()},
    }


def spec_difference(have: dict[str, Any], want: dict[str, Any]) -> str | None:
    """How model spec ``have`` differs from ``want``, for a message: ``"'cnn', not 'mlp'"`` for
    another model name, else each differing model argument (``"width=64, not width=32"``,
    ``"width at its default, not width=32"``) and other entry; None when they are the same spec."""
    if have.get("name") != want.get("name"):
        return f"{have.get('name')!r}, not {want.get('name')!r}"
    parts = []
    args, wanted = have.get("kwargs") or {}, want.get("kwargs") or {}
    for key in sorted(set(args) | set(wanted), key=str):
        if args.get(key) != wanted.get(key) or (key in args) != (key in wanted):
            parts.append(f"{_argument(args, key)}, not {_argument(wanted, key)}")
    for key in sorted((set(have) | set(want)) - {"name", "kwargs"}):
        if have.get(key) != want.get(key):
            parts.append(f"{key} {have.get(key)!r}, not {want.get(key)!r}")
    return "; ".join(parts) or None


def _argument(kwargs: dict[str, Any], key: str) -> str:
    return f"{key}={kwargs[key]!r}" if key in kwargs else f"{key} at its default"


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build the dense model a :func:`model_spec` dict describes.

    A spec with ``"removed_channels"`` describes a structurally pruned model: those are
    rebuilt by :func:`prunescope.structured.groups.rebuild`, which removes the channels. A
    model of the ecosystem is initialised as its architecture (an ``hf:`` directory's weights
    are not read: whoever rebuilds from a spec loads weights of their own, a checkpoint's).
    """
    missing = [key for key in ("name", "input_shape", "num_classes") if key not in spec]
    if missing:
        raise UsageError(f"model spec is missing {missing[0]!r}: build it with prunescope.models.model_spec")
    if spec.get("removed_channels"):
        raise UsageError("this spec describes a model with channels removed: rebuild it with "
                         "prunescope.structured.groups.rebuild")
    if is_hub(spec["name"]):
        shape = _check_shape(spec["name"], tuple(spec["input_shape"]), spec["num_classes"])
        return build_hub(spec["name"], shape, spec["num_classes"], spec.get("kwargs", {}), pretrained=False)
    return build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec.get("kwargs", {}))
