import pytest
import torch
from torch import nn

from prunescope.errors import UsageError
from prunescope.masks import global_sparsity, removed_count
from prunescope.pick.baselines import allocate, erk, uniform, uniform_plus
from prunescope.targets import Target, find_targets, flow_order


def _targets(*shapes):
    return [Target(f"l{i}.weight", f"l{i}", "weight", "conv" if len(s) == 4 else "linear", s)
            for i, s in enumerate(shapes)]


SHAPES = [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]  # LeNet-5 (Caffe)


def _removed(allocation, targets):
    return sum(removed_count(allocation[t.name], t.numel) for t in targets)


@pytest.mark.parametrize("method", [uniform, uniform_plus, erk])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.98])
def test_total_removed_is_exact(method, sparsity):
    targets = _targets(*SHAPES)
    allocation = method(targets, sparsity)
    assert _removed(allocation, targets) == round(sparsity * sum(t.numel for t in targets))
    assert all(0 <= s < 1 for s in allocation.values())


def test_uniform_with_indivisible_layers_is_exact_per_layer_and_in_total():
    targets = _targets((3, 7), (5, 11), (13, 2))
    allocation = uniform(targets, 0.5)
    counts = [removed_count(allocation[t.name], t.numel) for t in targets]
    assert sum(counts) == round(0.5 * 102)
    assert all(abs(c - 0.5 * t.numel) < 1 for c, t in zip(counts, targets, strict=True))


def test_uniform_plus_rules():
    targets = _targets(*SHAPES)
    allocation = uniform_plus(targets, 0.9)
    assert allocation["l0.weight"] == 0.0
    assert allocation["l3.weight"] == pytest.approx(0.8, abs=1 / 5000)
    assert allocation["l1.weight"] == pytest.approx(allocation["l2.weight"], abs=1e-4)


def test_uniform_plus_keeps_the_last_layer_uniform_when_below_the_cap():
    targets = _targets(*SHAPES)
    allocation = uniform_plus(targets, 0.5)
    assert allocation["l3.weight"] == pytest.approx(allocation["l2.weight"], abs=1e-3) and allocation["l3.weight"] < 0.8


def test_uniform_plus_infeasible_when_first_layer_is_too_large():
    targets = _targets((1000, 1000), (10, 10), (10, 10))
    with pytest.raises(UsageError, match=r"uniform\+ cannot reach 0\.5"):
        uniform_plus(targets, 0.5)


def test_erk_densities_follow_the_formula():
    targets = _targets((300, 784), (100, 300), (10, 100))  # LeNet-300-100
    sparsity = 0.98
    allocation = erk(targets, sparsity)
    # All layers stay below density 1 here: density_l = eps * sum(shape) / prod(shape).
    factors = [sum(t.shape) / t.numel for t in targets]
    kept = (1 - sparsity) * sum(t.numel for t in targets)
    eps = kept / sum(f * t.numel for f, t in zip(factors, targets, strict=True))
    for f, t in zip(factors, targets, strict=True):
        assert 1 - allocation[t.name] == pytest.approx(eps * f, abs=1 / t.numel)


def test_erk_makes_small_layers_dense_and_resolves_epsilon():
    targets = _targets((4, 3), (1000, 1000), (100, 1000))
    allocation = erk(targets, 0.9)
    assert allocation["l0.weight"] == 0.0
    assert _removed(allocation, targets) == round(0.9 * sum(t.numel for t in targets))
    # The remaining layers keep the ERK ratio between them.
    densities = {t.name: 1 - allocation[t.name] for t in targets[1:]}
    ratio = (sum(targets[1].shape) / targets[1].numel) / (sum(targets[2].shape) / targets[2].numel)
    assert densities["l1.weight"] / densities["l2.weight"] == pytest.approx(ratio, rel=1e-3)


def _model_with_known_weights():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]))
        model[1].weight.copy_(torch.tensor([[0.05, 0.9], [0.15, 1.0], [0.25, 1.1]]))
    return model


def test_global_magnitude_removes_the_smallest_weights_overall():
    model = _model_with_known_weights()
    targets = find_targets(model)
    allocation = allocate("global", model, targets, 0.5)  # 7 of 14: 0.05 0.1 0.15 0.2 0.25 0.3 0.4
    assert allocation == {"0.weight": 4 / 8, "1.weight": 3 / 6}


def test_lamp_allocation_thresholds_lamp_scores():
    model = _model_with_known_weights()
    targets = find_targets(model)
    allocation = allocate("lamp", model, targets, 0.5)
    assert global_sparsity(allocation, targets) == 0.5
    # LAMP keeps the largest weight of each layer (score 1) no matter how small.
    assert allocation["0.weight"] < 1 and allocation["1.weight"] < 1


def test_unknown_allocation_and_bad_sparsity(tiny_model):
    targets = find_targets(tiny_model)
    with pytest.raises(UsageError, match="unknown allocation 'erm'"):
        allocate("erm", tiny_model, targets, 0.5)
    with pytest.raises(UsageError, match="outside"):
        allocate("uniform", tiny_model, targets, 1.3)


@pytest.mark.parametrize("sparsity", [0.0, 1e-6, 0.001, 0.3, 0.9, 0.99])
def test_erk_with_every_layer_saturated_or_nearly(sparsity):
    # At sparsity 0 both layers' ERK density exceeds 1 (ε ≈ 85): every layer is dense, nothing divides by zero.
    targets = _targets((223, 162), (105, 283))
    allocation = erk(targets, sparsity)
    wanted = round(sparsity * sum(t.numel for t in targets))
    assert _removed(allocation, targets) == wanted
    if wanted == 0:
        assert allocation == {"l0.weight": 0.0, "l1.weight": 0.0}


def test_sweep_allocates_erk_at_its_dense_point(tiny_data):
    from prunescope.pipeline.sweep import sweep

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 3))
    result = sweep(model, tiny_data, [0.5], allocation="erk", device="cpu", latency_repeats=1)
    assert [p.achieved_sparsity for p in result.points] == [0.0, pytest.approx(0.5, abs=1 / 380)]


class _HeadFirst(nn.Module):
    """Registered head, stem, body; data flows stem → body → head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(30, 3)
        self.stem = nn.Linear(16, 8)
        self.body = nn.Linear(8, 30)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.relu(self.stem(x.flatten(1))))))


def test_uniform_plus_takes_first_and_last_in_data_flow_order(tiny_data):
    model = _HeadFirst()
    targets = find_targets(model)
    assert [t.name for t in targets] == ["head.weight", "stem.weight", "body.weight"]  # registration order
    example = tiny_data.train.x[:2]
    assert [t.name for t in flow_order(model, targets, example)] == ["stem.weight", "body.weight", "head.weight"]
    allocation = allocate("uniform+", model, targets, 0.5, example=example)
    assert allocation["stem.weight"] == 0.0  # first by data flow: dense
    assert 0 < allocation["head.weight"] <= 0.8  # last by data flow: capped
    assert _removed(allocation, targets) == round(0.5 * sum(t.numel for t in targets))
    with pytest.raises(UsageError, match="example input"):
        allocate("uniform+", model, targets, 0.5)


def test_flow_order_refuses_a_target_the_forward_pass_never_reaches(tiny_data):
    model = _HeadFirst()
    model.unused = nn.Linear(2, 2)
    with pytest.raises(UsageError, match=r"never reaches unused\.weight"):
        flow_order(model, find_targets(model), tiny_data.train.x[:2])
