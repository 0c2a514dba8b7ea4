"""Every allocation method behind one interface, built by name (:data:`ALLOCATORS`, :func:`make_allocator`).

An allocator (:class:`~prunescope.pick.allocator.Allocator`) turns a
:class:`~prunescope.pick.allocator.Problem` (the model's units, and whatever else there is to read:
sensitivity curves, the channel pruning with its exact footprint) into a
:class:`~prunescope.pick.pickers.Pick`, per-unit sparsities. What an allocator reads is part
of its registry entry (:attr:`Entry.reads`), so that callers never special-case a method:

- ``curves``: the pickers threshold, sconce, knee, budget and ensemble
  (:mod:`prunescope.pick.pickers`, :mod:`prunescope.pick.budget`);
- ``weights``: the weight baselines uniform, uniform+, global, ERK and LAMP at a global
  sparsity (:mod:`prunescope.pick.baselines`);
- ``channels``: the channel baselines at a MAC budget, channel-uniform and channel-global
  (:mod:`prunescope.structured.baselines`);
- ``validation``: ``ours`` (:mod:`prunescope.pick.ours`), which also reads the curves and
  selects among the budget pick and the weight baselines on val; ``owl-tuned`` and
  ``alpha-tuned`` (:mod:`prunescope.pick.tuned`), OWL's and AlphaPruning's grids selected on val.

The layer-wise allocations ``owl`` (:mod:`prunescope.pick.owl`, which also reads calibration
inputs for its Wanda scores) and ``alpha`` (:mod:`prunescope.pick.alpha`) read ``weights`` like
the baselines and, like them, remove exactly round(s · N) weights.

Options are given by keyword, the same names everywhere (``max_drop``, ``target_sparsity``,
``target_params``, ``target_macs``, ``target_latency_ms``, ``lower_bound``, ``vote``…); an
option the method does not take is a one-line error naming the options it does take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prunescope.curves import Curves
from prunescope.errors import UsageError
from prunescope.pick import alpha, owl
from prunescope.pick.allocator import Allocator, Pick, Problem
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.budget import BudgetPicker, macs_limit
from prunescope.pick.ours import DEFAULT_REFINER, Ours
from prunescope.pick.pickers import EnsemblePicker, KneePicker, Picker, ThresholdPicker, predicted_drops
from prunescope.pick.refine import Refiner
from prunescope.pick.tuned import GridSearch
from prunescope.structured.baselines import global_channels, uniform_channels

DEFAULT_MAX_DROP = 0.005  # half an accuracy point


@dataclass(frozen=True)
class WeightBaseline:
    """A weight baseline of :mod:`prunescope.pick.baselines` at global ``target_sparsity`` of the targets' weights."""

    name: str
    target_sparsity: float

    def allocate(self, problem: Problem) -> Pick:
        if problem.model is None or not problem.targets:
            raise UsageError(f"the {self.name} allocation needs the model and its prunable layers")
        allocation = allocate(self.name, problem.model, problem.targets, self.target_sparsity, example=problem.example)
        return _baseline_pick(self.name, allocation, problem.curves, {"target_sparsity": self.target_sparsity})


_CHANNEL_BASELINES = {"channel-uniform": uniform_channels, "channel-global": global_channels}


@dataclass(frozen=True)
class ChannelBaseline:
    """A channel baseline of :mod:`prunescope.structured.baselines`: the least pruning of its kind that brings
    the exact MACs per sample to at most ``target_macs`` (a count, or in (0, 1] a fraction of the dense MACs)."""

    name: str
    target_macs: float

    def allocate(self, problem: Problem) -> Pick:
        if problem.pruning is None:
            raise UsageError(f"the {self.name} allocation removes channels: it needs the model's channel groups")
        limit = macs_limit(self.target_macs, problem.pruning.footprint({}).macs)
        allocation = _CHANNEL_BASELINES[self.name](problem.pruning, limit)
        return _baseline_pick(self.name, allocation, problem.curves, {"target_macs": self.target_macs, "limit": limit})


def _baseline_pick(name: str, allocation: dict[str, float], curves: Curves | None, details: dict) -> Pick:
    """A baseline's allocation as a Pick; its drop is predicted from the curves when there are curves for it."""
    if curves is None or not set(allocation) <= set(curves.curves):
        return Pick(allocation, None, dict.fromkeys(allocation, name), details)
    drops = predicted_drops(curves, allocation)
    return Pick(allocation, sum(drops.values()), dict.fromkeys(allocation, name), {"drops": drops, **details})


# --------------------------------------------------------------------------- factories


def _drop(max_drop: float | None) -> float:
    if max_drop is not None and not max_drop >= 0:
        raise UsageError(f"max_drop must be at least 0, got {max_drop * 100:g} points")
    return DEFAULT_MAX_DROP if max_drop is None else max_drop


def _threshold(max_drop: float | None = None, lower_bound: bool | None = False) -> ThresholdPicker:
    return ThresholdPicker(max_drop=_drop(max_drop), use_lower_bound=bool(lower_bound))


def _sconce(max_drop: float | None = None) -> ThresholdPicker:
    """sconce judges ``|drop| <= degradation / 3``: ``max_drop`` is that third (default: sconce's 0.012 / 3)."""
    return ThresholdPicker.sconce() if max_drop is None else ThresholdPicker.sconce(3 * _drop(max_drop))


def _knee(max_drop: float | None = None, sensitivity: float = 1.0) -> KneePicker:
    return KneePicker(sensitivity=sensitivity, fallback_max_drop=_drop(max_drop))


def _ensemble(
    max_drop: float | None = None,
    lower_bound: bool | None = False,
    vote: bool | None = False,
    members: Sequence[str | Picker] | None = ("threshold", "knee"),
    rule: str | None = None,
) -> EnsemblePicker:
    """The most conservative (``vote`` or ``rule="vote"``: the median) of ``members``, pickers or picker names.

    Named members get ``max_drop`` (and the threshold ``lower_bound``).
    """
    built = [
        make_allocator(m, among=PICKERS, noun="picker", applicable=True, max_drop=max_drop, lower_bound=lower_bound)
        if isinstance(m, str)
        else m
        for m in members or ("threshold", "knee")
    ]
    if not all(isinstance(m, Picker) for m in built):
        raise UsageError("ensemble members must be pickers or picker names")
    return EnsemblePicker(built, rule=rule or ("vote" if vote else "min"))


def _budget(
    target_sparsity: float | None = None,
    target_params: int | None = None,
    target_macs: float | None = None,
    target_latency_ms: float | None = None,
    grid: float = 0.005,
) -> BudgetPicker:
    return BudgetPicker(target_sparsity=target_sparsity, target_params=target_params, target_macs=target_macs,
                        target_latency_ms=target_latency_ms, grid=grid)


def _ours(
    target_sparsity: float, refiner: Refiner | None = DEFAULT_REFINER, starts: Sequence[str] = ALLOCATIONS
) -> Ours:
    return Ours(target_sparsity, refiner, tuple(starts))


def _owl(target_sparsity: float, outlier_m: float | None = None, owl_lambda: float | None = None) -> owl.OWL:
    return owl.OWL(target_sparsity, owl.M_DEFAULT if outlier_m is None else outlier_m,
                   owl.LAMBDA_DEFAULT if owl_lambda is None else owl_lambda)


def _owl_tuned(target_sparsity: float) -> GridSearch:
    """OWL's M × λ grid (:data:`~prunescope.pick.owl.M_GRID` × :data:`~prunescope.pick.owl.LAMBDA_GRID`), the
    paper's default first."""
    default = (owl.M_DEFAULT, owl.LAMBDA_DEFAULT)
    grid = [default, *((m, lam) for m in owl.M_GRID for lam in owl.LAMBDA_GRID if (m, lam) != default)]
    return GridSearch("owl-tuned", [({"M": m, "lambda": lam}, owl.OWL(target_sparsity, m, lam)) for m, lam in grid])


def _alpha(target_sparsity: float, epsilon: float | None = None, tail: str | None = None) -> alpha.AlphaPruning:
    return alpha.AlphaPruning(target_sparsity, alpha.EPSILON_DEFAULT if epsilon is None else epsilon, tail or "peak")


def _alpha_tuned(target_sparsity: float, tail: str | None = None) -> GridSearch:
    """AlphaPruning's ε over :data:`~prunescope.pick.alpha.EPSILON_GRID`, the reference's default first."""
    grid = [alpha.EPSILON_DEFAULT, *(e for e in alpha.EPSILON_GRID if e != alpha.EPSILON_DEFAULT)]
    return GridSearch("alpha-tuned", [({"epsilon": e}, _alpha(target_sparsity, e, tail)) for e in grid])


def _weight_baseline(name: str) -> Callable[..., Allocator]:
    def build(target_sparsity: float) -> Allocator:
        return WeightBaseline(name, target_sparsity)

    return build


def _channel_baseline(name: str) -> Callable[..., Allocator]:
    def build(target_macs: float) -> Allocator:
        return ChannelBaseline(name, target_macs)

    return build


@dataclass(frozen=True)
class Entry:
    """A registered method: how to build it from options, and what it reads (``curves``, ``weights``, ``channels``,
    ``validation``). ``scan``: whether it needs sensitivity curves (None: when it reads ``curves``)."""

    build: Callable[..., Allocator]
    reads: str
    scan: bool | None = None

    @property
    def needs_scan(self) -> bool:
        return self.reads == "curves" if self.scan is None else self.scan

    @property
    def options(self) -> list[str]:
        return list(inspect.signature(self.build).parameters)


ALLOCATORS: dict[str, Entry] = {
    "threshold": Entry(_threshold, "curves"),
    "sconce": Entry(_sconce, "curves"),
    "knee": Entry(_knee, "curves"),
    "budget": Entry(_budget, "curves"),
    "ensemble": Entry(_ensemble, "curves"),
    **{name: Entry(_weight_baseline(name), "weights") for name in ALLOCATIONS},
    "owl": Entry(_owl, "weights"),
    "alpha": Entry(_alpha, "weights"),
    **{name: Entry(_channel_baseline(name), "channels") for name in _CHANNEL_BASELINES},
    "ours": Entry(_ours, "validation", scan=True),
    "owl-tuned": Entry(_owl_tuned, "validation", scan=False),
    "alpha-tuned": Entry(_alpha_tuned, "validation", scan=False),
}


def names(reads: str) -> tuple[str, ...]:
    """The registered methods that read ``reads`` (``curves``: the pickers; ``weights``: the weight baselines…)."""
    return tuple(name for name, entry in ALLOCATORS.items() if entry.reads == reads)


PICKERS = names("curves")
LAYERWISE = ("owl", "alpha")  # layer-wise allocations from each layer's statistics, at a global sparsity
WEIGHT_METHODS = (*ALLOCATIONS, *LAYERWISE)  # allocations at a global sparsity that select nothing on val
COMPARED = ("ours", *ALLOCATIONS)  # what compare and run compare unless told otherwise
COMPARABLE = (*COMPARED, *LAYERWISE, "owl-tuned", "alpha-tuned")  # every method compare takes at a global sparsity
CHANNEL_BASELINES = names("channels")


def make_allocator(
    name: str,
    *,
    among: Sequence[str] | None = None,
    noun: str = "allocation",
    applicable: bool = False,
    **options: object,
) -> Allocator:
    """The method ``name`` built from ``options``.

    ``among``: the names allowed here (default: all), ``noun`` how the error calls them
    (``"picker"``). Unknown names and options the method does not take are UsageErrors,
    except a None (nothing given); ``applicable=True`` leaves out every option the method
    does not take (a comparison hands every method the same settings).
    """
    allowed = list(among if among is not None else ALLOCATORS)
    if name not in allowed:
        raise UsageError(f"unknown {noun} {name!r}: use one of {', '.join(allowed)}")
    entry = ALLOCATORS[name]
    if applicable:
        options = {key: value for key, value in options.items() if key in entry.options}
    # None leaves an option to the method's default, unless the method takes it (refiner=None: no refinement).
    given = {key: value for key, value in options.items() if value is not None or key in entry.options}
    unknown = sorted(set(given) - set(entry.options))
    if unknown:
        option = unknown[0]
        takers = [other for other, e in ALLOCATORS.items() if option in e.options and other in allowed]
        where = f"; {option} applies to {', '.join(takers)}" if takers else ""
        raise UsageError(f"the {name} {noun} does not take {option} (--{option.replace('_', '-')}); "
                         f"it takes {', '.join(entry.options)}{where}")
    return entry.build(**given)


def weight_allocation(name: str, problem: Problem, sparsity: float) -> dict[str, float]:
    """The allocation of :data:`WEIGHT_METHODS` member ``name`` at global ``sparsity`` of ``problem``'s targets."""
    return make_allocator(name, among=WEIGHT_METHODS, target_sparsity=sparsity).allocate(problem).allocation
