"""How much of a model can be pruned: the prunable share of its weights, and what is left out and why.

The share is the weights of the prune targets over every parameter of the model (biases,
normalisation parameters and everything else included; a tensor shared by several modules,
such as tied embeddings, counted once). What is left out is said by category: biases,
normalisation parameters, targets dropped by ``--include`` / ``--exclude``, tensors of two or
more dimensions that no supported layer type holds (named; with the input shape, those the
MAC counter sees multiplied are named apart: a matrix product prunescope cannot prune), and
the rest (scales, position tables of one dimension…). Every command that prunes or scans
prints :meth:`PrunableShare.line` and records :meth:`PrunableShare.to_dict`, and warns when
less than half of the model is prunable (:data:`WARN_BELOW`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from prunescope.measure import count_macs
from prunescope.models import build_from_spec
from prunescope.structured.find import find_groups
from prunescope.targets import Target, chosen_targets, find_targets, parameter

WARN_BELOW = 0.5  # a model less than half prunable gets a warning: most of it stays dense whatever is asked
_SHOWN = 3  # names listed per category in the one-line summary


@dataclass(frozen=True)
class PrunableShare:
    """prunable / total weights. layers: the targets. left_out: {category: weights} (``biases``, ``norms``,
    ``excluded``, ``unsupported``, ``other``). excluded / unsupported: their tensors' names. in_products: the
    unsupported tensors that a forward pass multiplies (empty when no input shape was given)."""

    prunable: int
    total: int
    layers: int
    left_out: dict[str, int]
    excluded: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    in_products: list[str] = field(default_factory=list)
    left_dense: list[str] = field(default_factory=list)  # a language model's embeddings and output layer

    @property
    def share(self) -> float:
        return self.prunable / self.total if self.total else 0.0

    def line(self) -> str:
        """One line: ``prunable: 94.0% of the model's 104,576 weights (9 layers); left out: …``."""
        parts = []
        for category, count in self.left_out.items():
            if count:
                parts.append(f"{count:,} {_DESCRIBED[category](self)}")
        rest = f"; left out: {', '.join(parts)}" if parts else ""
        return (f"prunable: {self.share:.1%} of the model's {self.total:,} weights ({self.layers} "
                f"layer{'s' * (self.layers != 1)}){rest}")

    def warning(self) -> str | None:
        """Why the share is low, when below :data:`WARN_BELOW`; else None."""
        if self.share >= WARN_BELOW:
            return None
        largest = max(self.left_out, key=self.left_out.get)
        return (f"only {self.share:.1%} of the model's weights are prunable: a sparsity applies to them alone and the "
                f"other {1 - self.share:.1%} stay dense, most of them ({self.left_out[largest]:,}) "
                f"{_DESCRIBED[largest](self)}")

    @classmethod
    def from_dict(cls, data: dict) -> PrunableShare:
        """The share :meth:`to_dict` recorded."""
        return cls(data["prunable"], data["total"], data["layers"], dict(data["left_out"]), list(data["excluded"]),
                   list(data["unsupported"]), list(data["in_products"]), list(data.get("left_dense", [])))

    def to_dict(self) -> dict:
        return {"share": self.share, "prunable": self.prunable, "total": self.total, "layers": self.layers,
                "left_out": dict(self.left_out), "excluded": list(self.excluded),
                "unsupported": list(self.unsupported), "in_products": list(self.in_products),
                "left_dense": list(self.left_dense)}


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


_DESCRIBED = {
    "language_model": lambda s: (f"in the embeddings and output layer ({_names(s.left_dense)}), left dense as LLM "
                                 "pruning does (--include them to prune)"),
    "biases": lambda s: "in biases",
    "norms": lambda s: "in normalisation layers",
    "excluded": lambda s: f"in layers left out by --include/--exclude ({_names(s.excluded)})",
    "unsupported": lambda s: (f"in matrix products of unsupported layer types ({_names(s.in_products)}; see "
                              "prunescope.targets.register_matrix_layer)" if s.in_products else
                              f"in tensors of no supported layer type ({_names(s.unsupported)})"),
    "other": lambda s: "in other parameters",
}


def _is_norm(module: nn.Module) -> bool:
    # BatchNorm, LayerNorm, GroupNorm, RMSNorm and the libraries' own (LlamaRMSNorm, LayerNorm2d…), by name.
    return "norm" in type(module).__name__.lower()


def prunable_share(
    model: nn.Module, targets: Sequence[Target], input_shape: Sequence[int] | None = None,
    left_dense: Sequence[str] = (),
) -> PrunableShare:
    """The share of ``model``'s weights in ``targets`` (those a command prunes, after ``--include`` /
    ``--exclude``); with ``input_shape`` (one sample's) the unsupported tensors a forward pass multiplies are found
    by the MAC counter."""
    chosen = {id(parameter(model, t)) for t in targets}
    every = {id(parameter(model, t)): t for t in find_targets(model)}
    left_out = dict.fromkeys(("language_model", "excluded", "unsupported", "norms", "biases", "other"), 0)
    by_default = set(left_dense)
    excluded: list[str] = []
    unsupported: list[str] = []
    prunable = total = 0
    seen: set[int] = set()
    # The module owning each tensor and its attribute there (the first owner of a shared one).
    owners: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for attr, tensor in module.named_parameters(recurse=False):
            owners.setdefault(id(tensor), (module, attr))
    for name, tensor in model.named_parameters():  # shared tensors once, under their first name
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel()
        module, attr = owners[id(tensor)]
        if id(tensor) in chosen:
            prunable += tensor.numel()
        elif id(tensor) in every and every[id(tensor)].name in by_default:
            left_out["language_model"] += tensor.numel()
        elif id(tensor) in every:
            left_out["excluded"] += tensor.numel()
            excluded.append(every[id(tensor)].name)
        elif _is_norm(module):
            left_out["norms"] += tensor.numel()
        elif "bias" in attr:
            left_out["biases"] += tensor.numel()
        elif tensor.dim() >= 2:
            left_out["unsupported"] += tensor.numel()
            unsupported.append(name)
        else:
            left_out["other"] += tensor.numel()
    in_products: list[str] = []
    if unsupported and input_shape is not None:
        multiplied = count_macs(model, tuple(input_shape)).per_weight
        in_products = [name for name in unsupported if multiplied.get(name, (0, 0))[0] > 0]
    return PrunableShare(prunable, total, len(targets), left_out, excluded, unsupported, in_products,
                         sorted(by_default))


def unit_share(
    model: nn.Module, granularity: str, input_shape: Sequence[int], include: Sequence[str] = (),
    exclude: Sequence[str] = (), vocabulary: int | None = None,
) -> PrunableShare:
    """:func:`prunable_share` of the units a command at ``granularity`` prunes: the weight targets (for a language
    model of ``vocabulary`` tokens, without its default-dense embeddings and output layer:
    :func:`~prunescope.targets.chosen_targets`), or the weights of the layers whose slices the channel groups remove."""
    if granularity != "weight":
        return prunable_share(model, _grouped(model, input_shape, include, exclude), input_shape)
    targets, left = chosen_targets(model, vocabulary, include, exclude)
    return prunable_share(model, targets, input_shape, left_dense=list(left))


def spec_share(spec: dict, granularity: str = "weight") -> PrunableShare:
    """:func:`unit_share` of the architecture a model spec describes (studies that build their models by name)."""
    return unit_share(build_from_spec(spec), granularity, spec["input_shape"])


def _grouped(model: nn.Module, input_shape: Sequence[int], include: Sequence[str], exclude: Sequence[str]
             ) -> list[Target]:
    groups = find_groups(model, tuple(input_shape), include, exclude).groups.values()
    members = {member.rsplit(" (", 1)[0] for group in groups for member in group.members}
    return [t for t in find_targets(model) if t.module in members]
