"""OWL and AlphaPruning: the global count exact, and their published formulas on worked examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Metrics
from prunescope.masks import removed_count
from prunescope.models import build_model
from prunescope.pick import Problem, make_allocator
from prunescope.pick.esd import eigenvalues, hill_alpha
from prunescope.pick.spread import block_of, blocks
from prunescope.targets import find_targets


class Parallel(nn.Module):
    """Linear branches that all read the input: each target's calibration inputs are the model's own."""

    def __init__(self, *widths: int, fan_in: int = 10) -> None:
        super().__init__()
        names = "abc"[: len(widths)]
        self.branches = nn.ModuleDict({n: nn.Linear(fan_in, w, bias=False) for n, w in zip(names, widths, strict=True)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x.flatten(1)) for branch in self.branches.values()], 1)


def _removed(allocation, targets) -> dict[str, int]:
    return {t.name: removed_count(allocation[t.name], t.numel) for t in targets}


def _problem(model: nn.Module, train: torch.Tensor, calibration: int | None = None) -> Problem:
    targets = find_targets(model)
    split = Split(train, torch.zeros(len(train), dtype=torch.long))
    return Problem(model=model.eval(), targets=targets, train=split, calibration=calibration or len(train))


@pytest.mark.parametrize("name", ["owl", "alpha"])
@pytest.mark.parametrize("arch", ["lenet5", "lenet300", "mlp"])
def test_the_global_count_is_exact_at_every_sparsity(name, arch):
    torch.manual_seed(1)
    model = build_model(arch, (1, 8, 8), 10)
    problem = _problem(model, torch.randn(64, 1, 8, 8))
    total = sum(t.numel for t in problem.targets)
    for sparsity in (0.0, 0.3, 0.5, 0.77, 0.9, 0.98):
        for options in ({}, {"outlier_m": 3.0, "owl_lambda": 0.2} if name == "owl" else {"epsilon": 0.5}):
            allocation = make_allocator(name, target_sparsity=sparsity, **options).allocate(problem).allocation
            assert sum(_removed(allocation, problem.targets).values()) == round(sparsity * total)
            assert all(removed_count(allocation[t.name], t.numel) < t.numel for t in problem.targets)


def test_owl_follows_the_reference_formula_on_a_worked_example():
    # Wanda scores |W_ij| · ‖X_j‖ with X = the identity (every ‖X_j‖ = 1): the scores are |W|.
    # Branch weights are ones with k outliers of 100: mean 1 + 0.99k, M = 5 → D = k / 100.
    model = Parallel(10, 10, 10)
    with torch.no_grad():
        for branch, k in zip(model.branches.values(), (1, 3, 5), strict=True):
            branch.weight.fill_(1.0)
            branch.weight.view(-1)[:k] = 100.0
    problem = _problem(model, torch.eye(10).view(10, 1, 1, 10))
    pick = make_allocator("owl", target_sparsity=0.5).allocate(problem)  # M = 5, λ = 0.08
    assert pick.details["outlier_ratio"] == pytest.approx({"branches.a": 0.01, "branches.b": 0.03, "branches.c": 0.05})
    # r = (D − 0.01) / 0.04 · 2λ = 0, 0.08, 0.16; mean 0.08; s_b = 0.5 − (r_b − 0.08) = 0.58, 0.50, 0.42.
    assert pick.details["offset"] == pytest.approx({"branches.a": 0.0, "branches.b": 0.08, "branches.c": 0.16})
    assert pick.details["shift"] == pytest.approx(0.08)
    assert _removed(pick.allocation, problem.targets) == {"branches.a.weight": 58, "branches.b.weight": 50,
                                                          "branches.c.weight": 42}


def test_owl_shifts_by_the_weighted_mean_when_blocks_differ_in_size():
    # Two blocks of 100 and 200 weights, D = 0.01 and 0.03: r = 0 and 0.16; the weighted mean of r is
    # (100 · 0 + 200 · 0.16) / 300 = 0.10667, so s_a = 0.60667 (60.667 weights), s_b = 0.44667 (89.333):
    # 150 in all, rounded by largest remainder to 61 + 89.
    model = Parallel(10, 20)
    with torch.no_grad():
        for branch, k in zip(model.branches.values(), (1, 6), strict=True):
            branch.weight.fill_(1.0)
            branch.weight.view(-1)[:k] = 100.0
    problem = _problem(model, torch.eye(10).view(10, 1, 1, 10))
    pick = make_allocator("owl", target_sparsity=0.5).allocate(problem)
    assert pick.details["outlier_ratio"] == pytest.approx({"branches.a": 0.01, "branches.b": 0.03})
    assert pick.details["shift"] == pytest.approx(0.16 * 2 / 3)
    assert pick.allocation["branches.a.weight"] == pytest.approx(0.61)
    assert _removed(pick.allocation, problem.targets) == {"branches.a.weight": 61, "branches.b.weight": 89}


def test_owl_clips_to_keep_a_weight_per_layer_and_still_meets_the_count():
    model = Parallel(10, 10, 10)
    with torch.no_grad():
        for branch, k in zip(model.branches.values(), (1, 3, 5), strict=True):
            branch.weight.fill_(1.0)
            branch.weight.view(-1)[:k] = 100.0
    problem = _problem(model, torch.eye(10).view(10, 1, 1, 10))
    # λ = 0.2 at 0.95: unclipped the first block would be at 0.95 + 0.2 > 1.
    pick = make_allocator("owl", target_sparsity=0.95, owl_lambda=0.2).allocate(problem)
    removed = _removed(pick.allocation, problem.targets)
    assert removed["branches.a.weight"] == 99 and sum(removed.values()) == 285
    assert removed["branches.b.weight"] > removed["branches.c.weight"]  # fewer outliers, pruned more


def _diagonal(eigen: list[float]) -> torch.Tensor:
    return torch.diag(torch.tensor(eigen, dtype=torch.float64).sqrt()).float()


E = math.e
# Eigenvalues whose upper half gives α = 1 + n / Σ ln(λ / λ_min) = 1 + 4/1, 1 + 4/3 and 1 + 4/2 ("mid").
SPECTRA = {"a": [1, 1, 1, 1, E, E, E, E**2], "b": [1, 1, 1, 1, E, E**2, E**2, E**2],
           "c": [1, 1, 1, 1, E, E, E**2, E**2]}


def test_the_hill_estimator_at_half_the_spectrum_has_its_closed_form():
    for name, alpha in zip("abc", (5.0, 7 / 3, 3.0), strict=True):
        torch.testing.assert_close(hill_alpha(eigenvalues(_diagonal(SPECTRA[name])), "mid"), alpha, rtol=1e-6,
                                   atol=0)


def test_alphapruning_follows_the_reference_formula_on_a_worked_example():
    model = Parallel(8, 8, 8, fan_in=8)
    with torch.no_grad():
        for name, branch in model.branches.items():
            branch.weight.copy_(_diagonal(SPECTRA[name]))
    problem = _problem(model, torch.zeros(2, 1, 1, 8))
    pick = make_allocator("alpha", target_sparsity=0.5, tail="mid").allocate(problem)  # ε = 0.3
    # f = 0.7 + 0.6 · (α − 7/3) / (8/3) = 1.3, 0.7, 0.85; c = 0.5 · 3 / 2.85; s = f · c.
    assert pick.details["factor"] == pytest.approx({"branches.a": 1.3, "branches.b": 0.7, "branches.c": 0.85})
    assert pick.details["scale"] == pytest.approx(1.5 / 2.85)
    # 64 weights each: 43.789, 23.579, 28.632 → 96 by largest remainder: 44, 23, 29.
    assert _removed(pick.allocation, problem.targets) == {"branches.a.weight": 44, "branches.b.weight": 23,
                                                          "branches.c.weight": 29}


PARETO_ALPHA = 3.0


def _pareto_quantiles(n: int = 200) -> torch.Tensor:
    """Eigenvalues at the quantiles of a power law of exponent 3 above 1: λ_i = (1 − i/n)^(−1/(α − 1))."""
    return (1 - torch.arange(n, dtype=torch.float64) / n) ** (-1 / (PARETO_ALPHA - 1))


@pytest.mark.parametrize(("tail", "published"), [("peak", 3.0363335609436035), ("mid", 3.0665924549102783),
                                                 ("ks", 3.0363335609436035)])
def test_the_hill_estimator_recovers_a_power_law_as_the_reference_code_does(tail, published):
    """``published``: AlphaPruning's ``net_esd_estimator`` (float32) on the diagonal matrix of these eigenvalues."""
    values = _pareto_quantiles()
    estimate = hill_alpha(eigenvalues(torch.diag(values.sqrt())), tail)
    torch.testing.assert_close(estimate, published, rtol=1e-6, atol=0)
    assert abs(estimate - PARETO_ALPHA) < 0.1


@pytest.mark.parametrize("shape", [(64, 128), (100, 50), (200, 300)])
def test_the_hill_estimator_matches_weightwatcher_on_random_matrices(shape):
    powerlaw = pytest.importorskip("weightwatcher.WW_powerlaw", reason="weightwatcher is an optional cross-check")
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    values = eigenvalues(weight)
    torch.testing.assert_close(hill_alpha(values, "ks"), float(powerlaw.WWFit(values.numpy()).alpha), rtol=1e-9,
                               atol=0)


def test_a_convolution_pools_the_spectra_of_its_kernel_positions():
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    pooled = torch.cat([torch.linalg.svdvals(weight[:, :, i, j].double()) ** 2 for i in range(3) for j in range(3)])
    torch.testing.assert_close(eigenvalues(weight), pooled.sort().values)


def test_blocks_are_module_paths_up_to_their_first_index():
    assert block_of("model.layers.3.self_attn.q_proj") == "model.layers.3"
    assert block_of("layer1.0.conv1") == "layer1.0"
    assert block_of("fc") == "fc"
    model = build_model("lenet5", (1, 8, 8), 10)
    assert list(blocks(find_targets(model))) == [t.module for t in find_targets(model)]


def test_owl_and_alpha_refuse_what_they_cannot_use():
    model = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(UsageError, match="needs the train split"):
        make_allocator("owl", target_sparsity=0.5).allocate(Problem(model=model, targets=find_targets(model)))
    with pytest.raises(UsageError, match="ε must be in"):
        make_allocator("alpha", target_sparsity=0.5, epsilon=1.0)
    with pytest.raises(UsageError, match="outside"):
        make_allocator("owl", target_sparsity=1.0)


class _Validation:
    """Val accuracy that prefers a low sparsity of the first target (a stand-in for joint evaluations)."""

    def __init__(self, first: str) -> None:
        self.first, self.evaluations = first, 0

    def __call__(self, allocation):
        self.evaluations += 1
        accuracy = 1 - allocation.get(self.first, 0.0)
        return Metrics(accuracy=accuracy, macro_f1=None, loss=1.0, n=1, accuracy_ci=(accuracy, accuracy))


def test_the_tuned_rows_select_their_grid_on_val_and_say_what_they_chose():
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 8, 8), 10)
    targets = find_targets(model)
    base = _problem(model, torch.randn(64, 1, 8, 8))
    problem = Problem(model=base.model, targets=targets, train=base.train, calibration=64,
                      validation=_Validation(targets[0].name))
    for name, size in (("owl-tuned", 24), ("alpha-tuned", 5)):
        pick = make_allocator(name, target_sparsity=0.7).allocate(problem)
        values = [point["accuracy"] for point in pick.details["grid"]]
        assert len(values) == size and max(values) == 1 - pick.allocation[targets[0].name]
        assert pick.details["default"] == ({"M": 5.0, "lambda": 0.08} if name == "owl-tuned" else {"epsilon": 0.3})
        total = sum(t.numel for t in targets)
        assert sum(_removed(pick.allocation, targets).values()) == round(0.7 * total)
