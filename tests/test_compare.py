"""compare: every row at exactly its target sparsity of the compared layers; BatchNorm recalibrated alike."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset
from torch import nn
from torch.nn import functional as F

from prunescope.criteria import compute_scores
from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks, measured_sparsity, removed_count
from prunescope.measure import count_macs
from prunescope.models import build_model
from prunescope.pick import PairwiseRefiner
from prunescope.pick.refine import Refined
from prunescope.pipeline.compare import METHODS, compare
from prunescope.report.verdict import selection_sentence
from prunescope.scan import scan
from prunescope.targets import find_targets
from prunescope.train import recalibrated


def _fit(model: nn.Module, data, steps: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        model.train()
        optimiser.zero_grad()
        F.cross_entropy(model(data.train.x), data.train.y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def mlp():
    """A digits-like MLP (three Linear layers of very different sizes), fitted to the tiny data."""
    torch.manual_seed(0)
    data = make_dataset()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    return _fit(model, data, 30, 0.05), data


def _scan_of_every_layer(model: nn.Module) -> Curves:
    """Curves for every layer (the scan covered all of them), each layer with its own tolerance."""
    levels = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    curves = {
        t.name: Curve(t.name, t.numel, 0, [CurvePoint(s, 0.9 - (i + 1) * 0.1 * s**3, 0, 1, 60) for s in levels])
        for i, t in enumerate(find_targets(model))
    }
    return Curves("accuracy", "magnitude", CurvePoint(0.0, 0.9, 0.9, 0.9, 60), curves)


@pytest.mark.parametrize(("include", "exclude"), [(["1*"], []), ([], ["5*"]), (["1*", "5*"], [])])
def test_every_row_removes_its_target_of_the_compared_layers_only(mlp, include, exclude):
    model, data = mlp
    compared = find_targets(model, include, exclude)
    weights = sum(t.numel for t in compared)
    scores = compute_scores(model, compared, "magnitude")
    comparison = compare(model, data, [0.5, 0.8, 0.9], METHODS, curves=_scan_of_every_layer(model), include=include,
                         exclude=exclude, refiner=PairwiseRefiner(max_evaluations=6), test=False, calibration=200)
    assert comparison.weights == weights
    for row in comparison.rows:
        if row.error is not None:
            assert row.method == "uniform+" and len(compared) < 3  # needs three layers, refused with a reason
            continue
        assert set(row.allocation) == {t.name for t in compared}
        with applied(model, compared, compute_masks(scores, row.allocation)):
            zeros = measured_sparsity(model, compared)
        counted = sum(round(zeros[t.name] * t.numel) for t in compared)  # zeros counted in the weights themselves
        assert abs(counted - removed_count(row.sparsity, weights)) <= 1, (row.method, row.sparsity)
        assert row.removed == counted and row.achieved == pytest.approx(counted / weights)


class _Shrinking:
    """A refiner that returns its start with one target at half its sparsity: off the global target."""

    name = "shrinking"

    def refine(self, allocation, numels, evaluate, *, start_value=None, noise=None):
        first = next(iter(allocation))
        shrunk = {**allocation, first: allocation[first] / 2}
        return Refined(shrunk, 1.0, dict(allocation), start_value or 0.0, 0)


def test_a_row_that_misses_its_target_by_more_than_one_weight_is_refused(mlp):
    model, data = mlp
    comparison = compare(model, data, [0.8], ["ours", "global"], curves=_scan_of_every_layer(model),
                         refiner=_Shrinking(), test=True)
    ours, global_ = comparison.rows
    assert "refused" in ours.error and ours.val is None and ours.test is None
    assert global_.error is None and global_.test is not None


@pytest.fixture(scope="module")
def cnn():
    """The zoo's BatchNorm CNN fitted to the tiny data: one-shot masking leaves its statistics stale."""
    torch.manual_seed(0)
    data = make_dataset(n_train=480, n_val=120, n_test=60)
    return _fit(build_model("cnn", data.input_shape, data.num_classes), data, 40, 0.01), data


def test_recalibration_lifts_the_cnn_and_is_applied_to_every_method_alike(cnn):
    model, data = cnn
    state = {k: v.clone() for k, v in model.state_dict().items()}
    methods = ["uniform", "global", "erk", "lamp"]
    stale = compare(model, data, [0.8, 0.9], methods, test=False, recalibrate_bn=0)
    fresh = compare(model, data, [0.8, 0.9], methods, test=True, recalibrate_bn=4)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights and statistics restored
    assert stale.recalibrate_bn == 0 and fresh.recalibrate_bn == 4
    lifted = [f.val.accuracy - s.val.accuracy for s, f in zip(stale.rows, fresh.rows, strict=True)]
    assert min(lifted) >= 0 and sum(lifted) / len(lifted) > 0.1
    # Every method's row is what its masked model gives after the same recalibration, and nothing else.
    targets = find_targets(model)
    scores = compute_scores(model, targets, "magnitude")
    evaluator = Evaluator(model, data.val, device="cpu")
    for row in fresh.rows:
        with applied(model, targets, compute_masks(scores, row.allocation)), recalibrated(model, data.train, 4):
            assert evaluator.evaluate().accuracy == row.val.accuracy
    assert fresh.dense_val.accuracy == stale.dense_val.accuracy  # the dense model keeps its own statistics
    assert compare(model, data, [0.8], ["global"], test=False).recalibrate_bn == 20  # on by default with BatchNorm


def test_the_scan_recalibrates_every_point_on_request(cnn):
    model, data = cnn
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"strategy": "grid", "levels": [0.98], "include": ["conv2*", "conv3*"], "device": "cpu"}
    stale = scan(model, data, **options)
    fresh = scan(model, data, recalibrate_bn=4, **options)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert fresh.dense.value == stale.dense.value
    gains = [fresh.curves[n].points[0].value - stale.curves[n].points[0].value for n in stale.curves]
    assert min(gains) > 0.3  # 0.34 → 1.0 and 0.61 → 1.0 on this model


def test_the_selection_effort_of_ours_is_stated_next_to_the_comparison(mlp):
    model, data = mlp
    comparison = compare(model, data, [0.8], ["ours", "uniform", "global"], curves=_scan_of_every_layer(model),
                         starts=("uniform", "global"), refiner=PairwiseRefiner(max_evaluations=4), test=False)
    effort = comparison.rows[0].details["val_evaluations"]
    assert effort["candidates"] == 3 and effort["total"] == 3 + effort["refinement"] <= 7
    sentence = selection_sentence(comparison.to_dict()["rows"])
    assert sentence.startswith(f"ours was selected with joint val evaluations: {effort['total']} at 80% (3 candidates")
    assert selection_sentence([r for r in comparison.to_dict()["rows"] if r["method"] != "ours"]) is None


def test_channel_mode_compares_the_budget_pick_and_the_channel_baselines_at_equal_macs(mlp):
    model, data = mlp
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    curves = scan(model, data, strategy="grid", granularity="channel", criterion="l2")
    comparison = compare(model, data, [0.3, 0.6], granularity="channel", curves=curves)
    assert comparison.granularity == "channel" and comparison.criterion == "l2"
    assert [r.method for r in comparison.rows] == ["budget", "channel-uniform", "channel-global"] * 2
    dense = build_macs(model, data)
    for row in comparison.rows:
        assert row.error is None and row.val is not None and row.test is not None, row.error
        assert row.details["footprint"]["macs"] <= (1 - row.sparsity) * dense  # each meets the same MAC budget
        assert row.achieved == pytest.approx(1 - row.details["footprint"]["macs"] / dense)
        assert all(0 <= s < 1 for s in row.allocation.values())
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_channel_mode_refuses_weight_methods_and_reconstruction(mlp):
    model, data = mlp
    with pytest.raises(UsageError, match="unknown allocation 'lamp'"):
        compare(model, data, [0.5], ["lamp"], granularity="channel")
    with pytest.raises(UsageError, match="does not rank channels"):
        compare(model, data, [0.5], ["channel-uniform"], granularity="channel", criterion="magnitude")
    with pytest.raises(UsageError, match="applies to weight pruning"):
        compare(model, data, [0.5], ["channel-uniform"], granularity="channel", reconstruct="mask")


def build_macs(model: nn.Module, data) -> int:
    return count_macs(model, data.input_shape).dense
