"""One registry builds every allocation method, and each allocates through the same interface."""

from __future__ import annotations

import pytest
import torch

from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Metrics
from prunescope.masks import removed_count
from prunescope.models import build_model
from prunescope.pick import ALLOCATIONS, ALLOCATORS, CHANNEL_BASELINES, PICKERS, Allocator, Problem, make_allocator
from prunescope.pick.baselines import allocate
from prunescope.structured.baselines import global_channels, uniform_channels
from prunescope.structured.find import find_groups
from prunescope.structured.importance import group_scores
from prunescope.structured.pruning import ChannelPruning
from prunescope.targets import find_targets

SHAPE = (1, 8, 8)
OPTIONS = {"curves": {"max_drop": 0.01}, "weights": {"target_sparsity": 0.6}, "channels": {"target_macs": 0.5},
           "validation": {"target_sparsity": 0.6}}


class _Validation:
    """Val accuracy falling with the sparsity of the first target: a stand-in for joint evaluations."""

    def __init__(self, first: str) -> None:
        self.first, self.evaluations = first, 0

    def __call__(self, allocation):
        self.evaluations += 1
        accuracy = 0.9 - allocation.get(self.first, 0.0) / 10
        return Metrics(accuracy=accuracy, macro_f1=accuracy, loss=1 - accuracy, n=100, accuracy_ci=(accuracy, accuracy))

    def gain_interval(self, before, after):
        """Noise-free: the interval is the gain itself."""
        gain = (before.get(self.first, 0.0) - after.get(self.first, 0.0)) / 10
        return gain, gain


@pytest.fixture(scope="module")
def problem() -> Problem:
    torch.manual_seed(0)
    model = build_model("lenet5", SHAPE, 10).eval()
    targets = find_targets(model)
    groups = find_groups(model, SHAPE)
    levels = (0.5, 0.8, 0.9)
    # Weight curves whose drop grows with sparsity, steeper for later targets.
    curves = Curves(metric="accuracy", criterion="magnitude", dense=CurvePoint(0.0, 0.9, 0.9, 0.9, 100), curves={
        t.name: Curve(t.name, t.numel, 0, [CurvePoint(s, 0.9 - s * (i + 1) / 50, 0.0, 1.0, 100) for s in levels])
        for i, t in enumerate(targets)
    })
    pruning = ChannelPruning(groups, group_scores(groups, "l2"))
    train = Split(torch.randn(32, *SHAPE), torch.zeros(32, dtype=torch.long))  # OWL's calibration inputs
    return Problem(model=model, targets=targets, example=torch.zeros(2, *SHAPE), curves=curves, pruning=pruning,
                   validation=_Validation(targets[0].name), train=train, calibration=32)


def test_every_method_is_registered_once_with_what_it_reads():
    assert set(PICKERS) == {"threshold", "sconce", "knee", "budget", "ensemble"}
    assert set(ALLOCATIONS) == {"uniform", "uniform+", "global", "erk", "lamp"}
    assert set(CHANNEL_BASELINES) == {"channel-uniform", "channel-global"}
    assert set(ALLOCATORS) == {*PICKERS, *ALLOCATIONS, *CHANNEL_BASELINES, "ours", "owl", "alpha", "owl-tuned",
                               "alpha-tuned"}
    assert {name for name, entry in ALLOCATORS.items() if entry.reads == "validation"} == {
        "ours", "owl-tuned", "alpha-tuned"}
    assert ALLOCATORS["owl"].reads == ALLOCATORS["alpha"].reads == "weights"


@pytest.mark.parametrize("name", list(ALLOCATORS))
def test_every_method_allocates_through_one_interface(problem, name):
    entry = ALLOCATORS[name]
    options = {"target_sparsity": 0.6} if name == "budget" else OPTIONS[entry.reads]
    allocator = make_allocator(name, **options)
    assert isinstance(allocator, Allocator) and allocator.name == name
    pick = allocator.allocate(problem)
    units = problem.pruning.groups.groups if entry.reads == "channels" else problem.curves.curves
    assert set(pick.allocation) == set(units)
    assert all(0 <= s < 1 for s in pick.allocation.values())
    assert set(pick.decided_by.values()) <= {name, "threshold", "knee"}  # the ensemble names its members
    if "target_sparsity" in options:  # budget, the weight baselines and ours remove round(s · N) weights
        total = sum(t.numel for t in problem.targets)
        removed = sum(removed_count(pick.allocation[t.name], t.numel) for t in problem.targets)
        assert abs(removed - round(0.6 * total)) <= len(problem.targets)


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_weight_baselines_are_the_baseline_functions_at_an_exact_count(problem, name):
    pick = make_allocator(name, target_sparsity=0.6).allocate(problem)
    assert pick.allocation == allocate(name, problem.model, problem.targets, 0.6, example=problem.example)
    total = sum(t.numel for t in problem.targets)
    assert sum(removed_count(pick.allocation[t.name], t.numel) for t in problem.targets) == round(0.6 * total)
    assert pick.predicted_drop is not None  # read off the curves, which cover every target


@pytest.mark.parametrize(
    ("name", "function"), [("channel-uniform", uniform_channels), ("channel-global", global_channels)]
)
def test_channel_baselines_meet_a_mac_fraction_of_the_dense_model(problem, name, function):
    dense = problem.pruning.footprint({}).macs
    pick = make_allocator(name, target_macs=0.5).allocate(problem)
    assert pick.allocation == function(problem.pruning, 0.5 * dense)
    assert problem.pruning.footprint(pick.allocation).macs <= 0.5 * dense
    assert pick.details["limit"] == 0.5 * dense


def test_a_method_refuses_a_problem_without_what_it_reads(problem):
    with pytest.raises(UsageError, match="reads sensitivity curves"):
        make_allocator("threshold").allocate(Problem(model=problem.model, targets=problem.targets))
    with pytest.raises(UsageError, match="channel groups"):
        make_allocator("channel-uniform", target_macs=0.5).allocate(Problem(curves=problem.curves))


def test_options_are_checked_by_name():
    with pytest.raises(UsageError, match="unknown allocation 'best'"):
        make_allocator("best")
    with pytest.raises(UsageError, match="unknown picker 'uniform'"):
        make_allocator("uniform", among=PICKERS, noun="picker")
    with pytest.raises(UsageError, match=r"does not take max_drop .*max_drop applies to threshold, sconce, knee"):
        make_allocator("uniform", target_sparsity=0.5, max_drop=0.01)
    assert make_allocator("sconce", max_drop=0.004).max_drop == pytest.approx(0.004)  # a third of sconce's degradation
    assert make_allocator("ensemble", vote=True, lower_bound=True).members[0].use_lower_bound
