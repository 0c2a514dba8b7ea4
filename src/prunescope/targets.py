"""Discover what can be pruned: the weight tensors of Linear, ConvNd, RNN/LSTM/GRU, attention, embeddings and
the other matrix layers (Hugging Face ``Conv1D``, layers registered with :func:`register_matrix_layer`).

A target is one weight tensor, named by its parameter path (``"fc1.weight"``,
``"rnn.weight_hh_l0"``, ``"attn.in_proj_weight"``). Biases and normalisation parameters
are never targets: they are few, and removing them rarely saves anything.

Orientation: every target is also a matrix (out, fan_in), what per-row criteria (Wanda),
calibration inputs and reconstruction read: a Linear's weight as it is, a convolution's as
out × in·kh·kw, and a Hugging Face ``Conv1D``'s (GPT-2), stored (in, out) because it computes
``x @ W + b``, transposed (:meth:`Target.matrix`, :meth:`Target.from_matrix`).

Which layers are matrix layers is known from their type, never guessed from a weight's shape
(a square matrix reads the same both ways): ``nn.Linear`` and its subclasses, the ``Conv1D``
of ``transformers`` (recognised by its class name and its ``nf`` / ``nx`` widths, so that
``transformers`` is never imported here), and any class a user registers. A tensor shared by
several modules (tied weights: GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is one
target, named where it first occurs, its other names kept as ``aliases``.
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
# Matrix layers registered by users: class -> whether the weight is stored (in, out) (see register_matrix_layer).
_REGISTERED: dict[type, bool] = {}


@dataclass(frozen=True)
class Target:
    """One prunable weight tensor.

    name: parameter path, e.g. ``"layer1.0.conv1.weight"``.
    module: path of the owning module (``""`` for the root).
    param: attribute name on that module (``"weight"``, ``"weight_ih_l0"``, ``"in_proj_weight"``).
    kind: ``linear``, ``conv``, ``recurrent``, ``attention`` or ``embedding``.
    shape: shape of the tensor.
    transposed: the tensor is stored (fan_in, out), as a Hugging Face ``Conv1D``'s.
    aliases: other parameter paths of the same tensor (tied weights), in module order.
    """

    name: str
    module: str
    param: str
    kind: str
    shape: tuple[int, ...]
    transposed: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def rows(self) -> int:
        """Output rows of the matrix view (out channels, out features)."""
        return self.shape[-1] if self.transposed else self.shape[0]

    @property
    def fan_in(self) -> int:
        """Columns of the matrix view: the inputs each output row reads (in · kh · kw for a convolution)."""
        return self.numel // self.rows

    def matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (the target's shape: its weight, a score, a mask) as the (rows, fan_in) matrix, a view."""
        return tensor.t() if self.transposed else tensor.reshape(self.rows, -1)

    def from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`matrix`: a (rows, fan_in) matrix in the tensor's own shape and layout (contiguous)."""
        return matrix.t().contiguous() if self.transposed else matrix.reshape(self.shape)

    def to_dict(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "shape": list(self.shape), "numel": self.numel}
        if self.transposed:
            data["transposed"] = True
        if self.aliases:
            data["aliases"] = list(self.aliases)
        return data


def register_matrix_layer(layer: type[nn.Module], *, transposed: bool) -> None:
    """Make the 2-D ``weight`` of every ``layer`` module a prune target, with its fan-in orientation.

    The layer must compute ``x @ weight.T (+ bias)`` over the last dimension of its first input
    (``transposed=False``: weight stored (out, in), as ``nn.Linear``) or ``x @ weight (+ bias)``
    (``transposed=True``: stored (in, out), as Hugging Face's ``Conv1D``); calibration (Wanda,
    reconstruction) reads its inputs on that contract. Call it before the targets are found, e.g.
    in the module of a ``--model`` factory.
    """
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise UsageError(f"register_matrix_layer takes an nn.Module class, got {layer!r}")
    _REGISTERED[layer] = bool(transposed)


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT, GPT-2…), by duck typing: class ``Conv1D`` with
    integer widths ``nf`` (out) and ``nx`` (in) and a weight of shape (nx, nf)."""
    if type(module).__name__ != "Conv1D":
        return False
    nf, nx, weight = getattr(module, "nf", None), getattr(module, "nx", None), _tensor_or_none(module, "weight")
    return isinstance(nf, int) and isinstance(nx, int) and weight is not None and tuple(weight.shape) == (nx, nf)


def matrix_orientation(module: nn.Module) -> bool | None:
    """For a matrix layer (one computing a product of its input's last dimension with a 2-D ``weight``): whether the
    weight is stored (in, out), i.e. transposed; None for any other module."""
    if isinstance(module, nn.Linear):
        return False
    if _is_hf_conv1d(module):
        return True
    return next((flag for cls, flag in _REGISTERED.items() if isinstance(module, cls)), None)


def _weights_of(module: nn.Module) -> Iterator[tuple[str, str, bool]]:
    """(param name, kind, transposed) of the prunable weights owned directly by ``module``."""
    if (transposed := matrix_orientation(module)) is not None:
        yield "weight", "linear", transposed
    elif isinstance(module, _CONV):
        yield "weight", "conv", False
    elif isinstance(module, _RNN):
        for name in module._flat_weights_names:
            if name.startswith("weight_"):
                yield name, "recurrent", False
    elif isinstance(module, nn.MultiheadAttention):
        # out_proj is a Linear submodule and is found on its own.
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if _tensor_or_none(module, name) is not None:
                yield name, "attention", False
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        yield "weight", "embedding", False


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


def _storage_key(tensor: torch.Tensor) -> tuple:
    """What identifies one tensor's memory: shared (tied) parameters have the same key."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _all_targets(model: nn.Module) -> list[Target]:
    """Every prunable tensor once, in module order; a tensor reached from several modules keeps its first name."""
    first: dict[tuple, int] = {}
    found: list[Target] = []
    for path, module in model.named_modules():
        for param, kind, transposed in _weights_of(module):
            tensor = _tensor_or_none(module, param)
            name = f"{path}.{param}" if path else param
            key = _storage_key(tensor)
            if key in first:  # tied: the same tensor under another name
                t = found[first[key]]
                found[first[key]] = Target(t.name, t.module, t.param, t.kind, t.shape, t.transposed,
                                           (*t.aliases, name))
                continue
            first[key] = len(found)
            found.append(Target(name, path, param, kind, tuple(tensor.shape), transposed))
    return found


def matches(target: Target, pattern: str) -> bool:
    """Whether shell-style glob ``pattern`` matches the target's name or module path, or one of its aliases'."""
    names = (target.name, target.module, *target.aliases, *(alias.rpartition(".")[0] for alias in target.aliases))
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def find_targets(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Target]:
    """All prunable weight tensors of ``model``, in module order, each tensor once (tied weights: see ``aliases``).

    ``include`` / ``exclude`` are shell-style globs matched against the target name and
    its module path (``"conv*"``, ``"layer1.*"``, ``"fc3.weight"``), and those of its aliases.
    With ``include`` only matching targets are kept; ``exclude`` then drops matches. A glob
    that matches no target is an error, since it is almost always a typo, and so are patterns
    that leave no target: a command would run and report on nothing.
    """
    found = _all_targets(model)
    if not found:
        raise UsageError("model has no prunable layers (Linear, Conv, RNN/LSTM/GRU, MultiheadAttention, Embedding or "
                         "another matrix layer: see prunescope.targets.register_matrix_layer)")
    available = ", ".join(t.name for t in found)
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not any(matches(t, pattern) for t in found):
                raise UsageError(f"{option} {pattern!r} matches no prunable layer; available: {available}")
    if include:
        found = [t for t in found if any(matches(t, p) for p in include)]
    chosen = [t for t in found if not any(matches(t, p) for p in exclude)]
    if not chosen:  # only --exclude can empty the set: every --include pattern matched a target above
        patterns = " ".join(f"--exclude {p!r}" for p in exclude)
        among = " of those --include chose" if include else ""
        raise UsageError(f"{patterns} leaves no layer to prune{among}; available: {available}")
    return chosen


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


LANGUAGE_MODEL_DEFAULT = ("embeddings and the output layer are left dense, as in LLM pruning practice (Wanda, "
                          "SparseGPT, OWL): --include them to prune")


def language_model_defaults(targets: Sequence[Target], vocabulary: int) -> dict[str, str]:
    """What LLM practice leaves dense in a language model of ``vocabulary`` tokens, ``{target: why}``: every
    embedding table, and the output layer (the last matrix in module order with one output row per token)."""
    left = {t.name: "an embedding" for t in targets if t.kind == "embedding"}
    heads = [t for t in targets if t.kind == "linear" and t.rows == vocabulary and t.name not in left]
    if heads:
        left[heads[-1].name] = "the output layer"
    return left


def chosen_targets(
    model: nn.Module, vocabulary: int | None, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Target], dict[str, str]]:
    """The targets a command prunes and those left dense by default, ``(targets, {name: why})``.

    ``vocabulary``: the token count of a language model's data (None: any other model). For a
    language model without ``include``, :func:`language_model_defaults` are left out (an
    ``include`` that names them, or any ``include``, chooses exactly what it matches instead).
    """
    targets = find_targets(model, include, exclude)
    if vocabulary is None or include:
        return targets, {}
    left = language_model_defaults(targets, vocabulary)
    kept = [t for t in targets if t.name not in left]
    if not kept:
        raise UsageError(f"no layer to prune: a language model's {', '.join(left)} stay dense by default; "
                         "name the layers to prune with --include")
    return kept, left
