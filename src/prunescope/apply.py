"""Apply an allocation ``{target name: sparsity}`` to a model for good, and export the result.

- :func:`prune` scores the weights (:mod:`prunescope.criteria`), removes exactly
  ``round(s · n)`` weights of each target (:func:`prunescope.masks.compute_masks`; when asked,
  re-fitting the kept ones by layer-wise reconstruction, :mod:`prunescope.reconstruct`) and
  keeps them removed with a ``torch.nn.utils.prune`` re-parametrisation
  (``weight = weight_orig * weight_mask``), so that fine-tuning cannot bring them back.
- :func:`export` writes a checkpoint with the masks baked into the weights: it loads into
  the plain architecture with :func:`prunescope.checkpoint.load_checkpoint`, and its
  ``state_dict`` entry is a plain state dict (``torch.load(path)["state_dict"]``) that any
  copy of the architecture loads without prunescope.
- :func:`prune_channels` removes whole channels of coupled groups physically (Torch-Pruning
  surgery, :mod:`prunescope.structured`); the returned model spec rebuilds the smaller
  architecture, so the result saves as an ordinary checkpoint.
- :func:`load_allocation` reads the allocation of a pick file written by ``prunescope pick``
  (or a bare ``{target: sparsity}`` JSON object) and refuses one made for another model.

Pruning never un-prunes: a target the model already has pruned keeps its zeros, which are
removed first (so the new mask is a subset of the old one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.utils import prune as torch_prune

from prunescope.calibration import calibration_inputs
from prunescope.checkpoint import save_checkpoint
from prunescope.criteria import compute_scores
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError
from prunescope.io import read_json
from prunescope.masks import Masks, apply_permanently, check_sparsity, compute_masks, measured_sparsity
from prunescope.patterns import Pattern, check_pattern, check_widths, pattern_masks
from prunescope.reconstruct import Reconstruction
from prunescope.reconstruct import reconstruct as reconstruct_layers
from prunescope.structured.allocation import removal_for
from prunescope.structured.find import find_groups
from prunescope.structured.groups import Footprint, pruned_spec
from prunescope.structured.importance import group_scores
from prunescope.targets import Target, by_name, find_targets


def _names(targets: Sequence[Target | str]) -> list[str]:
    return [t if isinstance(t, str) else t.name for t in targets]


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_allocation(
    allocation: Mapping[str, Any],
    targets: Sequence[Target | str],
    *,
    source: str = "allocation",
    dense_if_missing: bool = False,
) -> dict[str, float]:
    """``allocation`` as ``{name: float}`` in target order, after checking it fits ``targets``.

    Every target must have a sparsity in [0, 1) and no other key may appear; otherwise a
    one-line UsageError names the unknown and the missing targets (``source`` says where the
    allocation came from, e.g. a file name). ``dense_if_missing``: a target the allocation
    does not name stays dense (channel picks name only the groups their scan covered).
    """
    if not isinstance(allocation, Mapping):
        raise UsageError(f"{source} must map target names to sparsities, got a {type(allocation).__name__}")
    names = _names(targets)
    if dense_if_missing:
        allocation = {name: allocation.get(name, 0.0) for name in names} | dict(allocation)
    unknown = [k for k in allocation if k not in names]
    missing = [n for n in names if n not in allocation]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown targets {_listing(unknown)}")
        if missing:
            parts.append(f"missing targets {_listing(missing)}")
        if unknown:
            parts.append(f"known: {_listing(names, 20)}")
        raise UsageError(
            f"{source} does not fit this model's prunable layers ({'; '.join(parts)}): "
            "was it made for another model or other --include/--exclude?"
        )
    checked = {}
    for name in names:
        value = allocation[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{source}: sparsity of {name} is {value!r}, not a number in [0, 1)")
        checked[name] = check_sparsity(float(value), f"{source}: sparsity of {name}")
    return checked


def existing_masks(model: nn.Module, targets: Sequence[Target]) -> Masks:
    """Keep-masks (bool) of the targets ``model`` already has pruned with ``torch.nn.utils.prune``."""
    masks = {}
    for t in targets:
        mask = model.get_submodule(t.module)._buffers.get(t.param + "_mask")
        if mask is not None:
            masks[t.name] = mask.detach().bool()
    return masks


def release(model: nn.Module, targets: Sequence[Target], names: Sequence[str]) -> None:
    """Remove the ``torch.nn.utils.prune`` re-parametrisation of targets ``names``, zeros baked in.

    Used before re-applying a (combined) mask, so that every tensor carries one pruning
    hook, and its parameter ends up in the same place whether or not it was pruned before.
    """
    named = by_name(targets)
    for name in names:
        torch_prune.remove(model.get_submodule(named[name].module), named[name].param)


def pruning_masks(
    model: nn.Module,
    targets: Sequence[Target],
    allocation: Mapping[str, float],
    *,
    criterion: str = "magnitude",
    data: Dataset | Split | None = None,
    seed: int = 0,
) -> Masks:
    """Keep-masks removing ``round(s · n)`` lowest-scored weights per allocated target.

    Weights the model has already pruned (``torch.nn.utils.prune`` masks) score lowest, so
    they are removed first and never come back: a target pruned beyond its allocation keeps
    its current zeros (the mask is then the current one). ``data`` (the dataset, or its train
    split) feeds the gradient criteria.
    """
    split = data.train if isinstance(data, Dataset) else data
    chosen = [t for t in targets if t.name in allocation]
    scores = compute_scores(model, chosen, criterion, data=split, seed=seed)
    current = existing_masks(model, chosen)
    effective = {}
    for t in chosen:
        requested = round(allocation[t.name] * t.numel)
        if t.name in current:
            pruned = ~current[t.name].to(scores[t.name].device)
            scores[t.name] = scores[t.name].float().masked_fill(pruned, -math.inf)
            requested = max(requested, int(pruned.sum()))
        effective[t.name] = requested / t.numel
    return compute_masks(scores, effective)


def prune(
    model: nn.Module,
    allocation: Mapping[str, float],
    *,
    criterion: str = "magnitude",
    data: Dataset | Split | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    seed: int = 0,
    reconstruct: str | None = None,
    calibration: int | None = None,
    reconstruct_fallback: bool = False,
    on_reconstructed: Callable[[Reconstruction], None] | None = None,
    pattern: Pattern | None = None,
) -> Masks:
    """Prune ``model`` in place to ``allocation`` and return the keep-masks applied.

    The targets are ``find_targets(model, include, exclude)``; the allocation must name each
    of them and nothing else (one-line UsageError naming the unknown / missing ones). Each
    target loses exactly ``round(s · n)`` weights, the lowest under ``criterion``
    (``data`` needed for ``taylor`` / ``fisher``), and keeps them at zero through training
    via ``torch.nn.utils.prune.custom_from_mask``. :func:`prunescope.masks.make_permanent`
    turns the re-parametrisation into plain zeroed weights; :func:`export` saves them baked.

    ``reconstruct``: ``mask`` re-fits the kept weights of those masks by layer-wise
    reconstruction on ``calibration`` seeded inputs of ``data`` (the train split), ``obs`` also
    chooses each layer's mask (same counts); ``reconstruct_fallback`` prunes the layers whose
    inputs cannot be captured with the criterion's masks alone. ``on_reconstructed`` gets the
    :class:`~prunescope.reconstruct.Reconstruction` (per-layer errors, the layers that fell back).

    ``pattern`` (N:M, :mod:`prunescope.patterns`): every target the allocation prunes (sparsity > 0)
    keeps exactly N of every M weights along its input dimension instead; the model must not
    carry pruning masks already. The masks are checked N:M before they are applied.
    """
    targets = find_targets(model, include, exclude)
    checked = check_allocation(allocation, targets)
    existing = list(existing_masks(model, targets))
    if pattern is None:
        masks = pruning_masks(model, targets, checked, criterion=criterion, data=data, seed=seed)
    else:
        if existing:
            raise UsageError(f"an N:M pattern is chosen on unpruned weights, and {existing[0]} is already pruned: "
                             "start from the dense checkpoint")
        chosen = [t for t in targets if checked[t.name] > 0]
        check_widths(chosen, pattern)
        split = data.train if isinstance(data, Dataset) else data
        masks = pattern_masks(compute_scores(model, chosen, criterion, data=split, seed=seed), pattern,
                              [t.name for t in chosen], {t.name: t for t in chosen})
    if reconstruct == "obs" and existing:
        raise UsageError(f"--reconstruct obs chooses its own masks, which could bring back the weights this model has "
                         f"already pruned ({existing[0]}…): use --reconstruct mask")
    release(model, targets, existing)
    if reconstruct is not None:
        split = data.train if isinstance(data, Dataset) else data
        if split is None:
            raise UsageError("reconstruction needs the train split for its calibration inputs")
        done = reconstruct_layers(model, targets, checked, calibration_inputs(split, calibration), masks=masks,
                                  select=reconstruct, fallback=reconstruct_fallback, pattern=pattern)
        masks = {name: done.masks.get(name, mask) for name, mask in masks.items()}
        if on_reconstructed is not None:
            on_reconstructed(done)
    if pattern is not None:
        check_pattern(masks, pattern, layouts={t.name: t for t in targets})
    apply_permanently(model, targets, masks, reparametrize=True)
    return masks


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    model_spec: dict[str, Any],
    dataset_spec: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a prunescope checkpoint with every mask baked into its weights.

    The file loads into the plain architecture (no ``weight_orig`` / ``weight_mask``) with
    :func:`prunescope.checkpoint.load_checkpoint`; ``meta`` gets ``measured_sparsity``
    (exact zeros per target) unless it already has one. ``model`` itself is not changed.
    """
    meta = dict(meta or {})
    meta.setdefault("measured_sparsity", measured_sparsity(model, find_targets(model)))
    return save_checkpoint(path, model, model_spec, dataset_spec, meta=meta)


def read_pick(path: str | os.PathLike[str], *, model_spec: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """The raw allocation and the settings in JSON file ``path`` (settings ``{}`` for a bare object).

    Accepts a pick file as ``prunescope pick`` writes it (``{"allocation": {...}, "settings":
    {...}, ...}``) or a bare ``{target: sparsity}`` object. Given ``model_spec``, a pick file
    that records another model spec is refused. Errors are one-line UsageErrors.
    """
    return _pick_parts(Path(path), _read_allocation(path), model_spec)


def _read_allocation(path: str | os.PathLike[str]) -> Any:
    return read_json(path, f"allocation file {Path(path)}", hint="write one with prunescope pick")


def _pick_parts(path: Path, document: Any, model_spec: dict[str, Any] | None) -> tuple[dict, dict]:
    """The allocation and settings of ``document``, read from ``path`` (see :func:`read_pick`)."""
    if isinstance(document, dict) and isinstance(document.get("allocation"), dict):
        made_for = document.get("model")
        if model_spec is not None and isinstance(made_for, dict) and made_for != model_spec:
            raise UsageError(
                f"allocation file {path} was picked for model {made_for.get('name')!r} {made_for.get('kwargs', {})}, "
                f"not for {model_spec.get('name')!r} {model_spec.get('kwargs', {})}: pick again for this model"
            )
        settings = document.get("settings")
        return document["allocation"], settings if isinstance(settings, dict) else {}
    if isinstance(document, dict) and "allocation" not in document:
        return document, {}
    raise UsageError(
        f"allocation file {path} holds neither a pick (with an \"allocation\" object) "
        "nor a {target: sparsity} object"
    )


def load_allocation(
    path: str | os.PathLike[str],
    targets: Sequence[Target | str],
    *,
    model_spec: dict[str, Any] | None = None,
    dense_if_missing: bool = False,
) -> dict[str, float]:
    """The allocation in JSON file ``path``, checked against ``targets``.

    Accepts a pick file as ``prunescope pick`` writes it (``{"allocation": {...}, ...}``) or a
    bare ``{target: sparsity}`` object. A file whose targets differ from ``targets`` (a pick
    made for another model, or with other include / exclude patterns) is refused with a
    one-line UsageError naming the differences. Target names alone cannot tell two models
    apart whose layers are named alike; given ``model_spec``, a pick file that records
    another model spec is refused too. A bare object may name only some targets: the others
    stay dense (0.0); a name that is no target is an error listing the known ones.
    """
    document = _read_allocation(path)
    allocation, _ = _pick_parts(Path(path), document, model_spec)
    source = f"allocation file {Path(path)}"
    # A bare {layer: sparsity} file may name only some layers: the others stay dense.
    partial = dense_if_missing or "allocation" not in document
    return check_allocation(allocation, targets, source=source, dense_if_missing=partial)


@dataclass
class ChannelPruned:
    """The outcome of :func:`prune_channels`.

    model: the pruned model (the one given, changed in place). model_spec: its spec, which
    rebuilds the pruned architecture. removal: root channel indices removed per group.
    dense / pruned: parameters and MACs per sample before and after. skipped: layers left dense, with the reason.
    """

    model: nn.Module
    model_spec: dict[str, Any]
    removal: dict[str, list[int]]
    dense: Footprint
    pruned: Footprint
    skipped: dict[str, str]


def prune_channels(
    model: nn.Module,
    model_spec: dict[str, Any],
    allocation: Mapping[str, float],
    *,
    importance: str = "l2",
    data: Split | None = None,
    round_to: int = 1,
    seed: int = 0,
) -> ChannelPruned:
    """Remove the least important channels of every group physically (Torch-Pruning surgery), in place.

    ``allocation``: ``{group: fraction of its channels removed}``; kept counts are rounded to
    multiples of ``round_to`` (see :func:`prunescope.structured.allocation.kept_channels`).
    ``importance`` ranks the channels (``data``, the train split, for ``taylor``).
    """
    groups = find_groups(model, model_spec["input_shape"])
    scores = group_scores(groups, importance, data=data, seed=seed)
    removal = removal_for(groups, scores, allocation, round_to)
    spec = pruned_spec(model_spec, groups, removal)
    dense, pruned = groups.footprint(), groups.footprint(removal)
    groups.prune(removal)
    return ChannelPruned(model, spec, removal, dense, pruned, groups.skipped)
