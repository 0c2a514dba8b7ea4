"""Finding the channel groups of a model: Torch-Pruning's dependency graph, traced once, each group checked.

Layers whose channels cannot be removed are left out with the reason (:attr:`ChannelGroups.skipped`):
the output layers, layers the trace does not reach, attention, recurrent layers other than
single-layer unidirectional LSTMs, and groups with a member prunescope cannot mask faithfully.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.conv import _ConvNd

from prunescope.errors import UsageError
from prunescope.models import build_from_spec
from prunescope.structured.groups import ChannelGroups, Removal
from prunescope.structured.slices import LSTMHiddenPruner, RecurrentLeaf, member_slices, structured_lstm

# Layers that mix channels: a removed channel stops at them (they are the group's consumers).
_MIXERS = (nn.Linear, _ConvNd, nn.RNNBase, nn.MultiheadAttention, nn.Embedding)


@contextlib.contextmanager
def _naming_failures(model: nn.Module) -> Iterator[None]:
    """Turn a tracing failure into a UsageError naming the innermost layer that was running."""
    running: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def enter(module: nn.Module, _: object) -> None:
        running.append(names[module] or type(module).__name__)

    def leave(_module: nn.Module, _inputs: object, _output: object) -> None:
        running.pop()

    handles = [
        hook(callback)
        for module in model.modules()
        for hook, callback in ((module.register_forward_pre_hook, enter), (module.register_forward_hook, leave))
    ]
    try:
        yield
    except UsageError:
        raise
    except Exception as error:  # Torch-Pruning raises anything from assertions to KeyErrors
        where = f"in layer {running[-1]!r}" if running else "after the forward pass"
        raise UsageError(
            f"Torch-Pruning cannot trace the model {where}: {type(error).__name__}: {error}; "
            "structured pruning needs a forward pass autograd can follow (no in-place tricks on "
            "weights, no torch.no_grad inside forward)"
        ) from error
    finally:
        for handle in handles:
            handle.remove()


def _output_layers(graph: tp.DependencyGraph) -> set[nn.Module]:
    """Channel-mixing layers whose output channels reach the model's output without another mixer."""
    outputs = set()
    for module, node in graph.module2node.items():
        if not isinstance(module, _MIXERS):
            continue
        frontier, seen = list(node.outputs), set()
        if not frontier:
            outputs.add(module)
        while frontier:
            current = frontier.pop()
            if id(current) in seen or isinstance(current.module, _MIXERS):
                continue
            seen.add(id(current))
            if not current.outputs:
                outputs.add(module)
                break
            frontier.extend(current.outputs)
    return outputs


def _unsupported_root(module: nn.Module) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        return "attention: embedding dimensions are not pruned structurally"
    if isinstance(module, nn.RNNBase) and not structured_lstm(module):
        return "recurrent layer: only single-layer unidirectional LSTMs have removable hidden units"
    if (
        isinstance(module, _ConvNd)
        and module.groups > 1
        and not module.groups == module.in_channels == module.out_channels
    ):
        return "grouped convolution"
    return None


def _all_groups(
    graph: tp.DependencyGraph, ignored: list[nn.Module], names: dict[nn.Module, str], skipped: dict[str, str]
) -> Iterator[tp.dependency.Group]:
    """Torch-Pruning's ``get_all_groups`` over the mixers (each layer's output channels in one group).

    Unlike it, groups coupled with an ``ignored`` layer are yielded too (it drops them silently,
    their layers then in no group and not in ``skipped``), and a root whose group Torch-Pruning
    fails to build (its index mappings break inside a GRU traced op by op) goes to ``skipped``.
    """
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if not isinstance(module, _MIXERS) or module in visited or module in ignored:
            continue
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except Exception as error:  # Torch-Pruning raises anything from IndexErrors to assertions
            skipped[names[module]] = f"Torch-Pruning cannot follow its channels ({type(error).__name__}: {error})"
            continue
        visited.update(dep.target.module for dep, _ in group.items if graph.is_out_channel_pruning_fn(dep.handler))
        yield group


def find_groups(
    model: nn.Module, input_shape: Sequence[int], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ChannelGroups:
    """The coupled channel groups of ``model`` for inputs of shape ``input_shape`` (one sample, no batch).

    ``include`` / ``exclude``: shell-style globs on group names, as for weight targets; a glob
    matching no group is an error. The model is traced once on zeros, in eval mode.
    """
    shape = tuple(int(d) for d in input_shape)
    device = next(model.parameters()).device
    example = torch.zeros((2, *shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with _naming_failures(model), torch.enable_grad(), warnings.catch_warnings():
            # Torch-Pruning warns of every parameter used outside a layer ("Unwrapped parameters") and
            # of concatenations it cannot size ("Maximum recursive depth"): groups meeting either are
            # judged below (refused, with the reason, when the channel dimension is a guess, or when
            # the group's removal breaks the forward pass), so its warnings would only repeat them.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message="Maximum recursive depth")
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                forward_fn=lambda m, x: m(x),
                customized_pruners={nn.LSTM: LSTMHiddenPruner(), nn.GRU: RecurrentLeaf(), nn.RNN: RecurrentLeaf()},
            )
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, _MIXERS) and module not in graph.module2node:
            skipped[name] = "not reached by the trace (used outside forward, or under torch.no_grad)"
    outputs = _output_layers(graph)
    for module in outputs:
        skipped[names[module]] = "output layer: its channels are the model's outputs"
    ignored = list(outputs)
    for module in graph.module2node:
        if isinstance(module, nn.Module) and (reason := _unsupported_root(module)) is not None:
            skipped[names[module]] = reason
            ignored.append(module)
    roots: dict[str, nn.Module] = {}
    for group in _all_groups(graph, ignored, names, skipped):
        root = group[0].dep.target.module
        name = names[root]
        # Output channels of every layer in the group: all left dense if the group is.
        producers = [
            dep.target.module
            for dep, _ in group.items
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, _MIXERS)
        ]
        # e.g. coupled to an output layer: removing these channels would change the output
        why = next((f"coupled with {names[m]!r}: {skipped[names[m]]}" for m in producers if m in ignored), None)
        guessed = [graph._param_to_name[p] for dep, _ in group.items if isinstance(p := dep.target.module, nn.Parameter)
                   and p in graph._param_to_name and sum(d > 1 for d in p.shape) > 1]
        if why is None and guessed:
            why = (f"meets {guessed[0]!r}, a parameter used outside a layer, whose channel dimension cannot be "
                   "told from the graph")
        if why is None:
            try:
                for dep, _idxs in group.items:
                    if isinstance(dep.target.module, nn.Module) and dep.target.module in names:
                        out = dep.handler.__name__.startswith("prune_out")
                        member_slices(dep.target.module, out, torch.tensor([0]))
            except ValueError as error:
                why = f"coupled with {names[dep.target.module]!r}: {error}"
        if why is not None:
            for module in producers:
                skipped.setdefault(names[module], why)
            continue
        roots[name] = root
    order = {name: i for i, name in enumerate(names.values())}
    ordered = dict(sorted(roots.items(), key=lambda item: order[item[0]]))
    roots = _select(ordered, include, exclude)
    if not roots:
        raise UsageError(
            "the model has no removable channel groups" + "".join(f"; {name}: {why}" for name, why in skipped.items())
        )
    return ChannelGroups(model, shape, graph, roots, dict(sorted(skipped.items())), list(ordered))


def _select(roots: dict[str, nn.Module], include: Sequence[str], exclude: Sequence[str]) -> dict[str, nn.Module]:
    available = ", ".join(roots)
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in roots):
                raise UsageError(f"{option} {pattern!r} matches no channel group; groups: {available}")
    chosen = {
        name: root
        for name, root in roots.items()
        if (not include or any(fnmatch.fnmatchcase(name, p) for p in include))
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }
    if roots and not chosen:  # as for weight targets (prunescope.targets.find_targets): a scan of nothing
        patterns = " ".join(f"--exclude {p!r}" for p in exclude)
        raise UsageError(f"{patterns} leaves no channel group to prune; groups: {available}")
    return chosen


def pruned_copy(model: nn.Module, input_shape: Sequence[int], removal: Removal) -> nn.Module:
    """A physically pruned deep copy of ``model`` (``model`` itself is untouched)."""
    twin = copy.deepcopy(model)
    return find_groups(twin, input_shape).prune(removal)


def rebuild(spec: dict) -> nn.Module:
    """The model a :func:`prunescope.models.model_spec` dict describes, dense or structurally pruned.

    A spec with ``"removed_channels"`` (see :func:`pruned_spec`) describes a structurally
    pruned model: the dense model is built, those channels are removed, and every layer is
    initialised afresh for its new shape (so that a scratch baseline starts from a proper
    initialisation; a checkpoint's state dict replaces it).
    """
    removal = spec.get("removed_channels")
    model = build_from_spec({key: value for key, value in spec.items() if key != "removed_channels"})
    if removal:
        find_groups(model, spec["input_shape"]).prune(removal)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model
