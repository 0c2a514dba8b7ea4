"""Block-by-block calibration: reconstruct a network one block at a time, one block's inputs in memory.

As SparseGPT's and Wanda's code prune an LLM: the calibration inputs run through the model
up to its first block once (the embeddings before it run only then); that block's inputs are
kept, per batch; every prunable layer of the block is pruned and reconstructed from the rows it
sees inside the block, run from those stored inputs; then the block runs on them and its outputs
replace them as the next block's inputs. Layers after the last block (an output layer asked for)
are reconstructed through the whole model afterwards, as layers before the first block are before.

**The next block's inputs are the pruned block's outputs** (SparseGPT's practice, and what the
whole-model path feeds each layer: the outputs of the already pruned layers), so every layer is
fitted to what it will see. **The target stays the dense network's outputs**, as on the whole-model
path (:mod:`prunescope.reconstruct`: layer ℓ minimises ‖X W_denseᵀ − X̃ Ŵᵀ‖², which also corrects what
earlier layers lost; SparseGPT's code fits ‖X̃ W_denseᵀ − X̃ Ŵᵀ‖² instead): so the dense network's
block inputs X are kept beside the pruned ones X̃ (the same tensors until a block is pruned) and a
dense copy of the block being pruned is run on them. The result equals the whole-model path's up
to floating-point rounding, at one forward pass of each block per layer instead of one of the
whole model, and with a copy of one block instead of the whole model.

**Memory**: the hidden states entering one block (both streams: 2 × N × T × width values at most),
the block's other arguments (masks, positions: the same for every block), one dense block, and one
layer's H; nothing grows with the number of blocks (:attr:`BlockInputs.peak_bytes` counts them).

**Which networks**: the targets' blocks are found by :func:`prunescope.blocks.block_of` (a numbered
child of a ``ModuleList`` / ``Sequential``: ``model.layers.3``); every numbered child of those
containers is a block of the chain. :func:`plan` checks on one example that the chain runs block by
block: each block called once, in order, block b + 1's first argument equal to block b's output
(its first element, for a tuple), every block called with the same other arguments. Where any of
this fails, or no target lies in a block, the plan says why and the whole-model path runs.
A ``transformers`` model runs with its key/value cache off (``config.use_cache``): a block run
twice on a shared cache would attend to its own stale keys.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunescope.blocks import block_of
from prunescope.calibration import captured_rows
from prunescope.targets import Target

RowPairs = Iterator[tuple[torch.Tensor, torch.Tensor]]


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the first block."""


@dataclass(frozen=True)
class BlockPlan:
    """How reconstruction runs. ``blocks``: the chain of blocks in call order (empty: the whole-model
    path, ``reason`` says why); ``inside``: each block's targets in data-flow order; ``before`` /
    ``after``: targets outside the blocks, run through the whole model before / after them."""

    blocks: list[str] = field(default_factory=list)
    inside: dict[str, list[Target]] = field(default_factory=dict)
    before: list[Target] = field(default_factory=list)
    after: list[Target] = field(default_factory=list)
    reason: str | None = None

    def line(self) -> str:
        """One sentence for the output: block by block over which blocks, or the whole model and why."""
        if self.reason is not None:
            return f"reconstruction through the whole model for every layer: {self.reason}"
        return (f"reconstruction block by block over {len(self.blocks)} blocks ({self.blocks[0]} … "
                f"{self.blocks[-1]}): one block's inputs in memory at a time")


@contextlib.contextmanager
def cache_off(model: nn.Module) -> Iterator[None]:
    """``model`` (a ``transformers`` model with a key/value cache) runs without it inside the block."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False):
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def _hidden(output: Any) -> torch.Tensor | None:
    """A block's hidden states in its output: the tensor itself, or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal arguments: tensors of one shape and value, containers element by element, anything else ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _chain(model: nn.Module, blocks: Sequence[str]) -> list[str]:
    """Every numbered child of the containers holding ``blocks``, container by container, in index order."""
    containers = list(dict.fromkeys(b.rpartition(".")[0] for b in blocks))
    chain = []
    for container in containers:
        numbered = sorted((n for n, _ in model.get_submodule(container).named_children() if n.isdigit()), key=int)
        chain += [f"{container}.{n}" if container else n for n in numbered]
    return chain


def _chain_problem(model: nn.Module, chain: Sequence[str], example: torch.Tensor) -> str | None:
    """Why ``chain`` does not run block by block on ``example`` (None: it does; see the module docstring)."""
    calls: list[tuple[str, tuple, dict]] = []
    outputs: dict[str, Any] = {}

    def before(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append((path, args, kwargs))

        return hook

    def after(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> None:
            outputs.setdefault(path, output)

        return hook

    handles = [h for path in chain for h in (
        model.get_submodule(path).register_forward_pre_hook(before(path), with_kwargs=True),
        model.get_submodule(path).register_forward_hook(after(path), with_kwargs=True))]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), cache_off(model):
            model(example.to(next(model.parameters()).device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    order = [path for path, _, _ in calls]
    for path in chain:
        if order.count(path) != 1:
            return f"block {path} runs {order.count(path)} times in one forward pass"
    if order != list(chain):
        return f"the blocks do not run in their order ({', '.join(order[:3])} …)"
    for path, args, _ in calls:
        if not args or not isinstance(args[0], torch.Tensor):
            return f"block {path} is not called with its hidden states as its first argument"
    for (path, _, _), (following, args, _) in itertools.pairwise(calls):
        output = _hidden(outputs[path])
        if output is None or not _same(output, args[0]):
            return f"the output of {path} is not the input of {following}"
    _, first_args, first_kwargs = calls[0]
    for path, args, kwargs in calls[1:]:
        if not (_same(args[1:], first_args[1:]) and _same(kwargs, first_kwargs)):
            return f"block {path} is called with other arguments than {chain[0]}"
    return None


def plan(model: nn.Module, ordered: Sequence[Target], example: torch.Tensor) -> BlockPlan:
    """How to reconstruct ``ordered`` (targets in data-flow order) on ``model``: block by block where the model
    allows (checked on ``example``, a batch of inputs), else the whole-model path with the reason."""
    in_block = {t.name: block_of(t.module) for t in ordered if block_of(t.module) != t.module}
    whole = list(ordered)
    if not in_block:
        return BlockPlan(before=whole, reason="no prunable layer sits in a numbered block (such as a transformer's "
                                              "decoder layers)")
    chain = _chain(model, list(in_block.values()))
    if (problem := _chain_problem(model, chain, example)) is not None:
        return BlockPlan(before=whole, reason=problem)
    positions = [i for i, t in enumerate(ordered) if t.name in in_block]
    first, last = positions[0], positions[-1]
    between = [t for t in ordered[first : last + 1] if t.name not in in_block]
    if between:
        return BlockPlan(before=whole, reason=f"{between[0].name} runs between the blocks")
    inside: dict[str, list[Target]] = {}
    for t in ordered[first : last + 1]:
        inside.setdefault(in_block[t.name], []).append(t)
    return BlockPlan(chain, inside, whole[:first], whole[last + 1 :])


class BlockInputs:
    """Per batch of calibration inputs, what enters the block being pruned: the pruned network's hidden states
    (``pruned``), the dense network's (``dense``: the same list while they are equal) and the block's other
    arguments (``rest``: positional after the first, keyword; those of the first block, the same for all).

    ``peak_bytes``: the most bytes of hidden states held at once (each tensor counted once), over the
    whole run: one block's inputs of the two streams, whatever the number of blocks.
    """

    def __init__(self, pruned: list[torch.Tensor], dense: list[torch.Tensor], rest: list[tuple[tuple, dict]]) -> None:
        self.pruned, self.dense, self.rest = pruned, dense, rest
        self.peak_bytes = 0
        self._note()

    def held_bytes(self) -> int:
        """Bytes of the hidden states held now, each tensor once (the streams share them until they part)."""
        unique = {id(t): t for t in (*self.pruned, *self.dense)}
        return sum(t.numel() * t.element_size() for t in unique.values())

    def _note(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.held_bytes())

    @classmethod
    def at(cls, model: nn.Module, block: str, calibration: torch.Tensor, batch_size: int) -> BlockInputs:
        """The inputs of ``model``'s ``block`` on ``calibration`` (N, *input_shape): one pass of each batch through
        what runs before it (the embeddings), stopped there. ``dense`` and ``pruned`` start as one list."""
        hidden: list[torch.Tensor] = []
        rest: list[tuple[tuple, dict]] = []

        def take(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden.append(args[0])
            rest.append((args[1:], kwargs))
            raise _Stop

        device = next(model.parameters()).device
        handle = model.get_submodule(block).register_forward_pre_hook(take, with_kwargs=True)
        training = model.training
        try:
            model.eval()
            for start in range(0, len(calibration), batch_size):
                with torch.no_grad(), cache_off(model), contextlib.suppress(_Stop):
                    model(calibration[start : start + batch_size].to(device))
        finally:
            model.train(training)
            handle.remove()
        return cls(hidden, hidden, rest)

    def rows(self, block: nn.Module, dense_block: nn.Module, module: str, param: str,
             sequential: bool = True) -> RowPairs:
        """Per batch, the rows the tensor ``param`` of ``module`` (a path inside the block) multiplies: run in the
        (partly pruned) ``block`` on the pruned inputs, and in ``dense_block`` on the dense inputs; with
        ``sequential=False`` the dense network's rows twice."""
        dense = captured_rows(dense_block, module, self._runs(dense_block, self.dense), param=param)
        if not sequential:
            return ((rows, rows) for rows in dense)
        pruned = captured_rows(block, module, self._runs(block, self.pruned), param=param)
        return zip(pruned, dense, strict=True)

    def _runs(self, block: nn.Module, hidden: list[torch.Tensor]) -> Iterator[Callable[[], Any]]:
        return (lambda i=i: block(hidden[i], *self.rest[i][0], **self.rest[i][1]) for i in range(len(hidden)))

    def advance(self, block: nn.Module, dense_block: nn.Module, changed: bool) -> None:
        """Replace, batch by batch, the inputs with the block's outputs: the pruned ``block``'s on the pruned
        inputs, the ``dense_block``'s on the dense inputs (one pass while the streams are one list and the
        block is unchanged)."""
        if changed and self.dense is self.pruned:
            self.dense = list(self.pruned)  # the same tensors, two lists: the streams part here
        streams = [(block, self.pruned)] + ([(dense_block, self.dense)] if self.dense is not self.pruned else [])
        with torch.no_grad():
            for i in range(len(self.pruned)):
                for module, hidden in streams:
                    output = _hidden(module(hidden[i], *self.rest[i][0], **self.rest[i][1]))
                    assert output is not None  # checked by plan on an example
                    hidden[i] = output
                self._note()
