"""N:M sparsity: in every group of M consecutive weights along a layer's input dimension, exactly N are kept.

A target's weight is viewed as (d_out, fan_in), as :meth:`prunescope.targets.Target.matrix`
and Wanda's scores see it: a Linear's (out, in) as it is, a Hugging Face ``Conv1D``'s (in, out)
transposed, a convolution's (out, in, kh, kw)
flattened per output channel into in·kh·kw in PyTorch's layout, so that a group of M runs
over the kernel positions of one input channel before the next one's (the columns that OBS
reconstruction sweeps). Every included layer's fan_in must then be a multiple of M: a layer
that is not is refused by name (exclude it to keep it dense). PyTorch's semi-structured
kernels (``torch.sparse.to_sparse_semi_structured``, 2:4 in fp16 / bf16) apply to Linear
weights only (:mod:`prunescope.measure.semistructured`).

With a pattern every pruned layer is at sparsity 1 − N/M, so no allocation applies: the
pattern decides which weights go (:func:`pattern_masks`: per group the N highest scores of a
criterion), and reconstruction chooses or re-fits them group by group
(:func:`prunescope.reconstruct.reconstruct` with ``pattern``). :func:`check_pattern` asserts
the pattern exactly on any masks; the product runs it before pruned weights are used or saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunescope.criteria import Scores
from prunescope.errors import PrunescopeError, UsageError
from prunescope.masks import Masks, applied
from prunescope.targets import Target


@dataclass(frozen=True)
class Pattern:
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (1 ≤ n < m)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 1 <= self.n < self.m:
            raise UsageError(f"pattern {self.n}:{self.m} must keep N of every M weights with 1 ≤ N < M, e.g. 2:4")

    @property
    def sparsity(self) -> float:
        """The fraction of every pruned layer's weights removed: 1 − N/M."""
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str) -> Pattern:
    """``"2:4"`` → Pattern(2, 4); a one-line UsageError for anything else."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"pattern {text!r} is not N:M with whole numbers N < M, e.g. 2:4")
    return Pattern(int(parts[0]), int(parts[1]))


def parse_patterns(text: str) -> list[Pattern]:
    """Comma-separated patterns, e.g. ``"2:4,4:8"``."""
    patterns = [parse_pattern(part) for part in text.split(",") if part.strip()]
    if not patterns:
        raise UsageError("--pattern is empty: give N:M, e.g. 2:4")
    return patterns


def fan_in(shape: Sequence[int]) -> int:
    """The input width of a weight of ``shape`` viewed as (d_out, fan_in)."""
    width = 1
    for d in shape[1:]:
        width *= d
    return width


def _width(target: Target) -> int:
    return target.fan_in if len(target.shape) > 1 else 1


def check_widths(targets: Iterable[Target], pattern: Pattern) -> None:
    """Refuse, naming it, the first target whose input width is not a multiple of M."""
    for t in targets:
        if len(t.shape) < 2 or _width(t) % pattern.m:
            module = t.module or t.name
            raise UsageError(f"{t.name} has input width {_width(t)}, not a multiple of {pattern.m}: pattern {pattern} "
                             f"cannot apply; exclude it (--exclude {module!r}) to keep it dense")


Layouts = Mapping[str, Target]
"""How each named tensor is laid out (:meth:`Target.matrix`); a name absent is stored (d_out, ...) like a Linear's."""


def _as_matrix(name: str, tensor: torch.Tensor, layouts: Layouts) -> torch.Tensor:
    return layouts[name].matrix(tensor) if name in layouts else tensor.reshape(tensor.shape[0], -1)


def _from_matrix(name: str, matrix: torch.Tensor, like: torch.Tensor, layouts: Layouts) -> torch.Tensor:
    return layouts[name].from_matrix(matrix) if name in layouts else matrix.reshape(like.shape)


def pattern_masks(scores: Scores, pattern: Pattern, names: Iterable[str], layouts: Layouts | None = None) -> Masks:
    """Keep-masks of targets ``names`` keeping, in every group of M along the input dimension, the N highest
    ``scores`` (ties: the earlier). ``layouts``: the targets by name, for layers that store a weight (in, out)."""
    layouts = layouts or {}
    masks = {}
    for name in names:
        if name not in scores:
            raise UsageError(f"unknown layer {name!r}; known: {', '.join(scores)}")
        score = scores[name]
        if score.dim() < 2 or _as_matrix(name, score, layouts).shape[1] % pattern.m:
            raise UsageError(f"{name} has input width {fan_in(score.shape)}, not a multiple of {pattern.m}: pattern "
                             f"{pattern} cannot apply; exclude it to keep it dense")
        matrix = _as_matrix(name, score, layouts)
        groups = matrix.reshape(matrix.shape[0], -1, pattern.m)
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=score.device)
        keep.scatter_(2, torch.topk(groups, pattern.n, dim=2, sorted=False).indices, True)
        masks[name] = _from_matrix(name, keep.reshape(matrix.shape), score, layouts)
    return masks


def check_pattern(masks: Mapping[str, torch.Tensor], pattern: Pattern, *, at_most: bool = False,
                  layouts: Layouts | None = None) -> None:
    """Raise PrunescopeError unless every mask keeps exactly N of every group of M along its input dimension.

    ``at_most``: at most N (the non-zeros of pruned weights, where a kept weight may be zero too).
    ``layouts``: as for :func:`pattern_masks`.
    """
    for name, mask in masks.items():
        matrix = _as_matrix(name, mask, layouts or {}) if mask.dim() >= 2 else mask
        if mask.dim() < 2 or matrix.shape[1] % pattern.m:
            raise PrunescopeError(f"the mask of {name} ({tuple(mask.shape)}) has no groups of {pattern.m}")
        kept = matrix.bool().reshape(matrix.shape[0], -1, pattern.m).sum(2)
        wrong = int((kept > pattern.n).sum() if at_most else (kept != pattern.n).sum())
        if wrong:
            raise PrunescopeError(f"the mask of {name} is not {pattern}: {wrong} of {kept.numel()} groups keep "
                                  f"{'more' if at_most else 'other'} than {pattern.n} weights; nothing was saved")


class PatternPruning:
    """N:M pruning for a ``with`` block (the ``Pruning`` protocol): every target the allocation prunes (sparsity
    > 0, whatever its value) gets :func:`pattern_masks` of ``scores``, checked, then restored bit-exactly."""

    def __init__(self, model: nn.Module, targets: Sequence[Target], scores: Scores, pattern: Pattern) -> None:
        check_widths(targets, pattern)
        self.model, self.targets, self.scores, self.pattern = model, list(targets), scores, pattern

    @contextlib.contextmanager
    def applied(self, allocation: Mapping[str, float]) -> Iterator[nn.Module]:
        layouts = {t.name: t for t in self.targets}
        masks = pattern_masks(self.scores, self.pattern, [name for name, s in allocation.items() if s > 0], layouts)
        check_pattern(masks, self.pattern, layouts=layouts)
        with applied(self.model, self.targets, masks):
            yield self.model
