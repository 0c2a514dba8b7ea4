"""The allocation interface: an :class:`Allocator` turns a :class:`Problem` into per-unit sparsities.

Every method, picker or baseline, implements it (see :mod:`prunescope.pick.registry`, which
builds them by name), so that callers never branch on which method they hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prunescope.calibration import calibration_inputs
from prunescope.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunescope.curves import Curves
    from prunescope.data.types import Split
    from prunescope.evaluate import Metrics
    from prunescope.structured.pruning import ChannelPruning
    from prunescope.targets import Target


@dataclass
class Pick:
    """A picker's answer.

    allocation: ``{target: sparsity}`` for every curve (0.0 = dense).
    predicted_drop: sum over targets of the curves' drop at the chosen sparsity (fraction of the metric);
        None for a baseline without curves to read it from.
    decided_by: ``{target: name of the picker or ensemble member that chose its sparsity}``.
    details: picker-specific facts (knees found, fallbacks, budget reached, members' picks).
    """

    allocation: dict[str, float]
    predicted_drop: float | None
    decided_by: dict[str, str]
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Validation(Protocol):
    """The val metrics of the model pruned with an allocation, each allocation measured once.

    ``evaluations``: how many allocations have been measured so far (a selection's effort).
    ``gain_interval``: the paired noise between two measured allocations.
    """

    evaluations: int

    def __call__(self, allocation: Mapping[str, float]) -> Metrics: ...

    def gain_interval(self, before: Mapping[str, float], after: Mapping[str, float]) -> tuple[float, float]:
        """95% paired interval of accuracy(after) − accuracy(before) on the same val examples (both measured)."""
        ...


@dataclass(frozen=True)
class Problem:
    """What an allocator may read.

    model / targets: the model and its weight units (weight baselines). example: a batch of
    inputs, ``(N, *input_shape)``, through which uniform+ finds the data-flow order. curves:
    sensitivity curves of the units (pickers). pruning: the channel groups with their
    importance and exact footprint (channel baselines). validation: joint val measurements
    (``ours``, which selects and refines on val). train / calibration: the train split and how
    many seeded inputs of it calibrate (OWL's Wanda scores). cache: what allocators computed
    from this problem's dense model (OWL's outlier ratios, AlphaPruning's alphas), reused by
    every later call on the same problem; the model must be the same at every call.
    """

    model: nn.Module | None = None
    targets: Sequence[Target] = ()
    example: torch.Tensor | None = field(default=None, repr=False)
    curves: Curves | None = None
    pruning: ChannelPruning | None = field(default=None, repr=False)
    validation: Validation | None = field(default=None, repr=False)
    train: Split | None = field(default=None, repr=False)
    calibration: int | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def needs_calibration(self, name: str) -> torch.Tensor:
        """``calibration`` seeded train inputs (N, *input_shape), the same at every call."""
        if self.train is None:
            raise UsageError(f"{name} reads calibration inputs: it needs the train split")
        return calibration_inputs(self.train, self.calibration)

    def needs_validation(self, name: str) -> Validation:
        """The val split to measure allocations on; a one-line UsageError naming ``name`` without one."""
        if self.validation is None:
            raise UsageError(f"{name} selects on val: it needs the val split to measure allocations on")
        return self.validation

    def needs_curves(self, name: str) -> Curves:
        """The scan's sensitivity curves; a one-line UsageError naming ``name`` without a scan."""
        if self.curves is None:
            raise UsageError(f"{name} needs a scan (it reads sensitivity curves): run prunescope scan first and "
                             "pass --scan")
        return self.curves


@runtime_checkable
class Allocator(Protocol):
    """Per-unit sparsities (fractions of a unit's weights, or of a group's channels) for a problem."""

    name: str

    def allocate(self, problem: Problem) -> Pick:
        """The per-unit sparsities of this method for ``problem``."""
        ...


class ReadsCurves:
    """Mixin of the pickers: as an allocator, a picker picks on the problem's curves."""

    name: str

    def pick(self, curves: Curves) -> Pick:
        raise NotImplementedError

    def allocate(self, problem: Problem) -> Pick:
        return self.pick(problem.needs_curves(f"the {self.name} picker"))
