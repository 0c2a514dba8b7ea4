"""Discover what can be pruned: the weight tensors of Linear, ConvNd, RNN/LSTM/GRU, attention and embeddings.

A target is one weight tensor, named by its parameter path (``"fc1.weight"``,
``"rnn.weight_hh_l0"``, ``"attn.in_proj_weight"``). Biases and normalisation parameters
are never targets: they are few, and removing them rarely saves anything.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.errors import UsageError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RNN = (nn.RNNBase,)  # RNN, LSTM and GRU


@dataclass(frozen=True)
class Target:
    """One prunable weight tensor.

    name: parameter path, e.g. ``"layer1.0.conv1.weight"``.
    module: path of the owning module (``""`` for the root).
    param: attribute name on that module (``"weight"``, ``"weight_ih_l0"``, ``"in_proj_weight"``).
    kind: ``linear``, ``conv``, ``recurrent``, ``attention`` or ``embedding``.
    shape: shape of the tensor.
    """

    name: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "numel": self.numel}


def _weights_of(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(param name, kind) of the prunable weights owned directly by ``module``."""
    if isinstance(module, nn.Linear):
        yield "weight", "linear"
    elif isinstance(module, _CONV):
        yield "weight", "conv"
    elif isinstance(module, _RNN):
        for name in module._flat_weights_names:
            if name.startswith("weight_"):
                yield name, "recurrent"
    elif isinstance(module, nn.MultiheadAttention):
        # out_proj is a Linear submodule and is found on its own.
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if _tensor_or_none(module, name) is not None:
                yield name, "attention"
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        yield "weight", "embedding"


def _tensor_or_none(module: nn.Module, param: str) -> torch.Tensor | None:
    # A module pruned with torch.nn.utils.prune keeps the trainable tensor as ``<param>_orig``.
    orig = module._parameters.get(param + "_orig")
    if orig is not None:
        return orig
    return getattr(module, param, None)


def parameter(model: nn.Module, target: Target) -> torch.Tensor:
    """The live tensor behind ``target`` (``weight_orig`` when pruned with torch.nn.utils.prune)."""
    tensor = _tensor_or_none(model.get_submodule(target.module), target.param)
    if tensor is None:
        raise UsageError(f"model has no tensor {target.name!r}: the target list belongs to another model")
    return tensor


def effective_weight(model: nn.Module, target: Target) -> torch.Tensor:
    """The weight the forward pass uses: ``weight_orig * weight_mask`` when pruned with torch.nn.utils.prune.

    Computed here rather than read from ``module.weight``, which prune only refreshes on the next forward.
    """
    module = model.get_submodule(target.module)
    mask = module._buffers.get(target.param + "_mask")
    tensor = parameter(model, target).detach()
    return tensor * mask if mask is not None else tensor


def find_targets(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Target]:
    """All prunable weight tensors of ``model``, in module order.

    ``include`` / ``exclude`` are shell-style globs matched against the target name and
    its module path (``"conv*"``, ``"layer1.*"``, ``"fc3.weight"``). With ``include`` only
    matching targets are kept; ``exclude`` then drops matches. A glob that matches no
    target is an error, since it is almost always a typo.
    """
    found = [
        Target(
            name=f"{path}.{param}" if path else param,
            module=path,
            param=param,
            kind=kind,
            shape=tuple(_tensor_or_none(module, param).shape),
        )
        for path, module in model.named_modules()
        for param, kind in _weights_of(module)
    ]
    if not found:
        raise UsageError("model has no prunable layers (Linear, Conv, RNN/LSTM/GRU, MultiheadAttention or Embedding)")

    def matches(target: Target, pattern: str) -> bool:
        return fnmatch.fnmatchcase(target.name, pattern) or fnmatch.fnmatchcase(target.module, pattern)

    available = ", ".join(t.name for t in found)
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not any(matches(t, pattern) for t in found):
                raise UsageError(f"{option} {pattern!r} matches no prunable layer; available: {available}")
    if include:
        found = [t for t in found if any(matches(t, p) for p in include)]
    return [t for t in found if not any(matches(t, p) for p in exclude)]


def by_name(targets: Sequence[Target]) -> dict[str, Target]:
    return {t.name: t for t in targets}


def forward_owner(model: nn.Module, path: str) -> str:
    """The module whose call applies the weights of module ``path``: itself, except for the ``out_proj`` of a
    MultiheadAttention, which the attention applies functionally (``out_proj`` itself is never called)."""
    parent, _, leaf = path.rpartition(".")
    if leaf == "out_proj" and isinstance(model.get_submodule(parent), nn.MultiheadAttention):
        return parent
    return path


def forward_with_pre_hooks(
    model: nn.Module, example: torch.Tensor, hooks: Mapping[str, Callable[..., None]], *, with_kwargs: bool = False
) -> None:
    """One forward pass of ``example`` in eval mode without gradients, ``hooks[path]`` a forward pre-hook on module
    ``path``; the hooks are removed and every module's training flag restored afterwards, also on an error."""
    handles = [model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=with_kwargs)
               for path, hook in hooks.items()]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example.to(next(model.parameters()).device))
    finally:
        for module, training in modes:
            module.training = training
        for handle in handles:
            handle.remove()


def flow_order(model: nn.Module, targets: Sequence[Target], example: torch.Tensor) -> list[Target]:
    """``targets`` in the order a forward pass on ``example`` (a batch of inputs) first calls their modules.

    Registration order (``find_targets``) is the order of ``__init__``, which need not be the
    order of ``forward``. Targets of one module (an LSTM's weights) keep their relative order,
    and an attention's ``out_proj`` goes with its attention (:func:`forward_owner`); a target
    whose module the forward pass never calls is an error.
    """
    order: dict[str, int] = {}
    owners = {t.name: forward_owner(model, t.module) for t in targets}
    modules = set(owners.values())

    def record(path: str) -> Callable[..., None]:
        def hook(*_: object) -> None:  # returns None: a pre-hook's return value would replace the input
            order.setdefault(path, len(order))

        return hook

    forward_with_pre_hooks(model, example, {path: record(path) for path in modules})
    unused = [t.name for t in targets if owners[t.name] not in order]
    if unused:
        raise UsageError(f"the forward pass never reaches {unused[0]}: exclude it (--exclude)")
    return sorted(targets, key=lambda t: order[owners[t.name]])  # stable: one module's tensors keep their order
