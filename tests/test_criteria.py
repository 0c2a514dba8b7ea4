import pytest
import torch
from torch import nn

from prunescope.criteria import compute_scores
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.masks import compute_masks
from prunescope.targets import find_targets, parameter


def _single_linear(weight: list[list[float]]) -> nn.Module:
    model = nn.Sequential(nn.Linear(len(weight[0]), len(weight), bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(weight))
    return model


def test_magnitude_is_absolute_value():
    model = _single_linear([[1.0, -3.0], [0.5, -0.25]])
    scores = compute_scores(model, find_targets(model), "magnitude")["0.weight"]
    assert torch.equal(scores, torch.tensor([[1.0, 3.0], [0.5, 0.25]]))


def test_lamp_matches_its_formula_on_a_hand_checked_case():
    # Sorted ascending by w²: 0.25²=0.0625, 0.5²=0.25, 1, 9; total 10.3125.
    model = _single_linear([[1.0, -3.0], [0.5, -0.25]])
    scores = compute_scores(model, find_targets(model), "lamp")["0.weight"]
    expected = torch.tensor([[1 / 10.0, 9 / 9.0], [0.25 / 10.25, 0.0625 / 10.3125]])
    assert torch.allclose(scores, expected)


def test_lamp_against_brute_force_formula():
    torch.manual_seed(1)
    model = _single_linear(torch.randn(5, 7).tolist())
    w = model[0].weight.detach().flatten().double()
    brute = torch.stack([w[u] ** 2 / (w**2)[(w**2) >= w[u] ** 2].sum() for u in range(w.numel())])
    scores = compute_scores(model, find_targets(model), "lamp")["0.weight"].flatten().double()
    assert torch.allclose(scores, brute, rtol=1e-6)
    # The largest weight of a layer always scores 1, so LAMP never empties a layer first.
    assert scores.max() == pytest.approx(1.0)


def _gradient_case():
    """A linear model whose per-batch loss gradient is computed by hand in the test."""
    model = _single_linear([[0.5, -1.0], [2.0, 0.25]])
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7], [1.5, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    return model, Split(x, y)


def _batch_gradient(model, x, y):
    weight = model[0].weight.detach().clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ weight.T, y)
    (grad,) = torch.autograd.grad(loss, weight)
    return grad


def _per_sample_gradients_by_hand(model, data):
    return torch.stack([_batch_gradient(model, data.x[i : i + 1], data.y[i : i + 1]) for i in range(len(data))])


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "snip"])
def test_gradient_criteria_follow_their_definitions(criterion):
    model, data = _gradient_case()
    # batch_size 4 and one batch: the whole (shuffled, same set) batch.
    scores = compute_scores(model, find_targets(model), criterion, data=data, batches=1, batch_size=4)["0.weight"]
    g = _batch_gradient(model, data.x, data.y)
    w = model[0].weight.detach()
    expected = {
        "taylor": (g * w) ** 2,
        # OBD: the squared gradient of each sample, averaged; not the square of the mean gradient.
        "fisher": 0.5 * w**2 * (_per_sample_gradients_by_hand(model, data) ** 2).mean(0),
        "snip": (g * w).abs(),
    }[criterion]
    assert torch.allclose(scores, expected, atol=1e-7)


def _cancelling_case():
    """Two examples with the same input and opposite labels: their gradients on column 0 cancel in the mean.

    Column 0 of the weight has logits tied for x = e1, so the per-sample gradients there are
    ±(0.5, -0.5); a third example (x = e2) gives column 1 a gradient that does not cancel.
    Theory: Taylor and SNIP (mean gradient) score column 0 zero, OBD (mean squared per-sample
    gradient) scores it 0.5 · 1 · 0.25 > column 1's score, so at 50% the masks are opposite.
    """
    model = _single_linear([[1.0, 0.1], [1.0, -0.1]])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    return model, Split(x, y)


def _mask(model, data, criterion, **options):
    scores = compute_scores(model, find_targets(model), criterion, data=data, **options)
    return compute_masks(scores, {"0.weight": 0.5})["0.weight"]


def test_obd_differs_from_taylor_and_snip_where_per_sample_gradients_cancel():
    model, data = _cancelling_case()
    targets = find_targets(model)
    taylor = compute_scores(model, targets, "taylor", data=data, batches=1, batch_size=3)["0.weight"]
    obd = compute_scores(model, targets, "fisher", data=data, batches=1, batch_size=3)["0.weight"]
    assert torch.allclose(taylor[:, 0], torch.zeros(2), atol=1e-12)
    assert torch.allclose(obd[:, 0], torch.full((2,), 0.5 * 0.25 * 2 / 3))
    column_0 = torch.tensor([[True, False], [True, False]])
    # Taylor and SNIP remove the cancelling column 0; OBD keeps it and removes column 1.
    for criterion in ("taylor", "snip"):
        assert torch.equal(_mask(model, data, criterion, batches=1, batch_size=3), ~column_0)
    assert torch.equal(_mask(model, data, "fisher", batches=1, batch_size=3), column_0)


def test_snip_differs_from_taylor_where_batch_gradients_cancel_across_batches():
    # Batches of one sample: Taylor squares each batch's gradient before averaging, SNIP averages first.
    model, data = _cancelling_case()
    column_0 = torch.tensor([[True, False], [True, False]])
    assert torch.equal(_mask(model, data, "snip", batches=3, batch_size=1), ~column_0)
    assert torch.equal(_mask(model, data, "taylor", batches=3, batch_size=1), column_0)


def test_obd_and_taylor_agree_on_batches_of_one_sample():
    # With one sample per batch the batch gradient is the per-sample gradient: Taylor = 2 · OBD, same masks.
    model, data = _gradient_case()
    targets = find_targets(model)
    taylor = compute_scores(model, targets, "taylor", data=data, batches=4, batch_size=1)["0.weight"]
    obd = compute_scores(model, targets, "fisher", data=data, batches=4, batch_size=1)["0.weight"]
    assert torch.allclose(taylor, 2 * obd, atol=1e-7)
    assert torch.equal(_mask(model, data, "taylor", batches=4, batch_size=1),
                       _mask(model, data, "fisher", batches=4, batch_size=1))


def test_snip_and_taylor_agree_on_one_batch():
    # One batch: SNIP = sqrt(Taylor), a monotone map, hence the same ranking and masks.
    model, data = _gradient_case()
    assert torch.equal(_mask(model, data, "taylor", batches=1, batch_size=4),
                       _mask(model, data, "snip", batches=1, batch_size=4))


@pytest.mark.parametrize("fixture", ["tiny_model", "sequence_model"])
def test_obd_per_sample_gradients_match_a_loop_over_samples(request, fixture, tiny_data):
    # tiny_model (BatchNorm) goes through vmap; sequence_model (LSTM) through micro-batches of one.
    model = request.getfixturevalue(fixture).eval()
    data = Split(tiny_data.train.x[:10], tiny_data.train.y[:10])
    targets = find_targets(model)
    scores = compute_scores(model, targets, "fisher", data=data, batches=2, batch_size=5)
    weights = [parameter(model, t) for t in targets]
    squares = [torch.zeros_like(w) for w in weights]
    for i in range(len(data)):
        loss = torch.nn.functional.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1])
        for total, g in zip(squares, torch.autograd.grad(loss, weights), strict=True):
            total += g**2
    for t, w, total in zip(targets, weights, squares, strict=True):
        assert torch.allclose(scores[t.name], 0.5 * w.detach() ** 2 * total / len(data), rtol=1e-4, atol=1e-10)


def test_taylor_averages_over_batches():
    model, data = _gradient_case()
    scores = compute_scores(model, find_targets(model), "taylor", data=data, batches=4, batch_size=1, seed=3)
    w = model[0].weight.detach()
    per_sample = [(_batch_gradient(model, data.x[i : i + 1], data.y[i : i + 1]) * w) ** 2 for i in range(4)]
    assert torch.allclose(scores["0.weight"], torch.stack(per_sample).mean(0), atol=1e-7)


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "snip"])
def test_gradient_criteria_leave_batchnorm_statistics_alone(tiny_model, tiny_data, criterion):
    before = tiny_model.bn.running_mean.clone()
    compute_scores(tiny_model, find_targets(tiny_model), criterion, data=tiny_data.train)
    assert torch.equal(tiny_model.bn.running_mean, before)
    assert not tiny_model.training


def test_random_is_seeded(tiny_model):
    targets = find_targets(tiny_model)
    a = compute_scores(tiny_model, targets, "random", seed=1)
    b = compute_scores(tiny_model, targets, "random", seed=1)
    c = compute_scores(tiny_model, targets, "random", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_unknown_criterion_and_missing_data(tiny_model):
    targets = find_targets(tiny_model)
    with pytest.raises(UsageError, match="unknown criterion 'l3'"):
        compute_scores(tiny_model, targets, "l3")
    with pytest.raises(UsageError, match="needs training data"):
        compute_scores(tiny_model, targets, "fisher")


@pytest.mark.parametrize("criterion", ["magnitude", "lamp"])
def test_already_pruned_weights_score_lowest(tiny_model, criterion):
    from torch.nn.utils import prune

    prune.l1_unstructured(tiny_model.fc1, "weight", amount=0.5)
    scores = compute_scores(tiny_model, find_targets(tiny_model), criterion)["fc1.weight"]
    pruned = tiny_model.fc1.weight_mask == 0
    assert torch.all(scores[pruned] == 0) and torch.all(scores[~pruned] > 0)
