"""Mode connectivity, CKA and the regime rule on cases whose answer is known."""

import copy
from unittest import mock

import pytest
import torch
from torch import nn

from prunescope.checkpoint import plain_state_dict
from prunescope.masks import apply_permanently
from prunescope.models import build_model
from prunescope.regimes import classify, connectivity, linear_cka, linear_path, mode_connectivity, representations, walk
from prunescope.regimes.classify import check_directions
from prunescope.targets import find_targets
from tests.conftest import TinyNet


def test_mc_of_an_analytic_bump_is_minus_its_height():
    # L(t) = 1 + 4 h t (1 - t): endpoints at 1, a barrier of height h above their mean at t = 0.5.
    h = 0.3
    ts = [i / 10 for i in range(11)]
    losses = [1 + 4 * h * t * (1 - t) for t in ts]
    mc, star = mode_connectivity(losses)
    assert ts[star] == 0.5
    assert mc == pytest.approx(-h)
    # A valley instead: mc is positive.
    assert mode_connectivity([1 - 4 * h * t * (1 - t) for t in ts])[0] == pytest.approx(h)


def test_identical_endpoints_have_zero_barrier(tiny_data):
    torch.manual_seed(0)
    model = TinyNet()
    path = linear_path(model, copy.deepcopy(model), tiny_data.val, tiny_data.train, points=11)
    assert len(path.t) == 11 and path.t[0] == 0 and path.t[-1] == 1
    assert path.mc == 0.0
    assert len(set(path.loss)) == 1


def test_permuted_copies_of_an_mlp_have_their_known_barrier(tiny_data):
    # Hidden units in pairs (a, -a): fc2(relu(A x) - relu(-A x)) = A x, a nearest-centroid classifier.
    # Swapping the halves of the hidden layer is a permutation of its units (same function); on the
    # line both layers scale by (1 - 2t), so the logits are (1 - 2t)^2 A x + b: at t = 1/2 only b is left.
    classes = tiny_data.num_classes
    x, y = tiny_data.train.x.flatten(1), tiny_data.train.y
    centres = torch.stack([x[y == c].mean(0) for c in range(classes)]) * 3
    bias = torch.tensor([0.2, -0.1, 0.0])
    eye = torch.eye(classes)

    def build(first, second):
        model = build_model("mlp", tiny_data.input_shape, classes, hidden=[2 * classes])
        with torch.no_grad():
            model.fc1.weight.copy_(torch.cat([first * centres, second * centres]))
            model.fc1.bias.zero_()
            model.fc2.weight.copy_(torch.cat([first * eye, second * eye], dim=1))
            model.fc2.bias.copy_(bias)
        return model

    a, b = build(1, -1), build(-1, 1)
    # The same function with its hidden units in another order: float sums in another order, hence tolerances.
    torch.testing.assert_close(a(tiny_data.val.x), b(tiny_data.val.x), rtol=1e-5, atol=1e-6)
    path = linear_path(a, b, tiny_data.val, tiny_data.train, points=11)
    logits = tiny_data.val.x.flatten(1) @ centres.T
    for t, loss in zip(path.t, path.loss, strict=True):
        expected = torch.nn.functional.cross_entropy((1 - 2 * t) ** 2 * logits + bias, tiny_data.val.y)
        assert loss == pytest.approx(float(expected), rel=1e-4)
    middle = float(torch.nn.functional.cross_entropy(bias.expand(len(tiny_data.val), -1), tiny_data.val.y))
    assert path.t_star == 0.5
    assert path.mc == pytest.approx(path.loss[0] - middle, rel=1e-4)
    assert path.mc < -0.5


def test_batchnorm_statistics_are_recomputed_at_every_point(tiny_data):
    torch.manual_seed(0)
    a = TinyNet()
    torch.manual_seed(1)
    b = TinyNet()
    for model in (a, b):  # stale statistics that no interpolated network has
        model.bn.running_mean.fill_(5.0)
    seen = []
    real = connectivity.recalibrate_batchnorm

    def spy(model, split, **kwargs):
        before = model.bn.running_mean.clone()
        result = real(model, split, **kwargs)
        seen.append((before, model.bn.running_mean.clone()))
        return result

    with mock.patch.object(connectivity, "recalibrate_batchnorm", side_effect=spy):
        linear_path(a, b, tiny_data.val, tiny_data.train, points=11)
    assert len(seen) == 11
    assert all(not torch.equal(before, after) for before, after in seen)
    assert all(torch.all(after != 5.0) for _, after in seen)
    assert torch.equal(a.bn.running_mean, torch.full((4,), 5.0))  # the endpoints are untouched


def test_pruned_endpoints_interpolate_their_zeros(tiny_data):

    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    targets = find_targets(a)
    fc1 = next(t for t in targets if t.name == "fc1.weight")
    mask_a = torch.rand(fc1.shape) > 0.5
    apply_permanently(a, [fc1], {"fc1.weight": mask_a})  # weight_orig / weight_mask
    mask_b = torch.rand(fc1.shape) > 0.5
    apply_permanently(b, [fc1], {"fc1.weight": mask_b})
    for t in (0.0, 0.5, 1.0):
        state = connectivity.interpolate(plain_state_dict(a), plain_state_dict(b), t)
        zero = state["fc1.weight"] == 0
        # Kept where either model keeps a weight (the union of the masks), zero where both pruned it.
        assert torch.equal(zero, ~(mask_a if t == 0 else mask_b if t == 1 else mask_a | mask_b))


def test_cka_is_one_for_identical_and_rotated_and_low_for_unrelated():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=generator))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(500, 20, generator=generator)) < 0.1
    assert linear_cka(x, torch.ones(500, 3)) == 0.0


def test_representations_capture_the_classifier_input(tiny_data):
    torch.manual_seed(0)
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, hidden=[16, 8])
    reps = representations(model, tiny_data.val, batch_size=7)
    assert reps.outputs.shape == (len(tiny_data.val), tiny_data.num_classes)
    assert reps.features.shape == (len(tiny_data.val), 8)
    expected = model.relu2(model.fc2(model.relu1(model.fc1(model.flatten(tiny_data.val.x)))))
    # Batches of 7 against one batch of the whole split: other GEMM blockings round differently (~1e-7 on these
    # O(1) features, also where a feature is near 0 after cancellation, hence an absolute term).
    torch.testing.assert_close(reps.features, expected.detach(), rtol=1e-5, atol=1e-6)
    assert not any(m._forward_pre_hooks for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    ("mc", "cka", "regime"),
    [(-0.5, 0.99, "I"), (-0.06, 0.2, "I"), (-0.04, 0.5, "II-A"), (0.3, 0.89, "II-A"), (0.0, 0.95, "II-B"),
     (-0.01, 0.9, "II-B")],
)
def test_classifier_assigns_synthetic_cells(mc, cka, regime):
    assert classify(mc, cka, epsilon=0.05, delta=0.9) == regime


def test_walk_follows_the_advice_and_stops():
    assert walk(["I", "I", "II-B", "II-A"], 0).chosen == 2
    assert walk(["I", "I", "II-B", "II-A"], 3).chosen == 2
    stuck = walk(["I", "II-A", "II-A"], 0)
    assert stuck.chosen == 1 and stuck.path == [0, 1] and stuck.reason == "advice turns back"
    assert walk(["I", "I"], 0).reason == "edge of the grid"


def test_direction_checks_against_measured_errors():
    checks = check_directions([1, 2, 3], ["I", "II-B", "II-A"], [0.30, 0.20, 0.25], [0.01, 0.01, 0.01])
    assert [(c.temperature, c.advice, c.neighbour, c.outcome) for c in checks] == [
        (1, "raise", 2, "right"), (3, "lower", 2, "right")]
    tie = check_directions([1, 2], ["I", "II-B"], [0.30, 0.29], [0.02, 0.0])
    assert tie[0].outcome == "tie"
