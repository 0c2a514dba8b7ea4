import pytest
import torch

from prunescope.criteria import compute_scores
from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import removed_count
from prunescope.pick import Pick, ThresholdPicker, model_evaluator, predicted_drops, verify
from prunescope.targets import find_targets
from prunescope.units import WeightPruning

DENSE = 0.9
LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]
SENSITIVITY = {"wide": (5000, 0.02), "narrow": (100, 0.05), "mid": (1000, 0.03)}  # numel, drop at s = 1


def _drop(name, s):
    return SENSITIVITY[name][1] * s**2


def _synthetic_curves():
    curves = {
        name: Curve(name, numel, 0, [CurvePoint(s, DENSE - _drop(name, s), 0, 1, 100) for s in LEVELS])
        for name, (numel, _) in SENSITIVITY.items()
    }
    return Curves("accuracy", "magnitude", CurvePoint(0.0, DENSE, DENSE, DENSE, 100), curves)


def _joint(interaction):
    """Metric of a joint allocation: the curves' drops plus ``interaction`` per pair of pruned targets."""

    def evaluate(allocation):
        drops = sum(_drop(name, s) for name, s in allocation.items())
        pairs = sum(a * b for i, a in enumerate(allocation.values()) for b in list(allocation.values())[i + 1 :])
        return DENSE - drops - interaction * pairs

    return evaluate


def test_verify_backs_off_until_the_joint_drop_is_within_the_bound():
    curves = _synthetic_curves()
    pick = ThresholdPicker(max_drop=0.02).pick(curves)
    assert pick.allocation == {"wide": 0.9, "narrow": 0.6, "mid": 0.8}
    evaluate = _joint(interaction=0.01)
    result = verify(pick, curves, evaluate, max_drop=0.03, step=0.05)

    assert result.steps[0].allocation == pick.allocation and result.steps[0].backed_off is None
    assert result.within_bound and result.measured_drop <= 0.03
    assert all(step.measured_drop > 0.03 for step in result.steps[:-1])  # stops at the first allocation within
    assert result.allocation == result.steps[-1].allocation
    assert result.measured_drop == pytest.approx(DENSE - evaluate(result.allocation))
    assert result.predicted_drop == pytest.approx(sum(predicted_drops(curves, result.allocation).values()))
    for before, after in zip(result.steps, result.steps[1:], strict=False):
        lowered = [name for name in before.allocation if after.allocation[name] != before.allocation[name]]
        assert lowered == [after.backed_off]
        assert before.allocation[after.backed_off] - after.allocation[after.backed_off] == pytest.approx(0.05)

    # The first target backed off is the one with the worst predicted drop per removed weight.
    per_weight = {name: _drop(name, s) / removed_count(s, SENSITIVITY[name][0]) for name, s in pick.allocation.items()}
    assert result.steps[1].backed_off == max(per_weight, key=per_weight.get) == "narrow"


def test_verify_backs_off_by_measured_drops_not_by_the_curves():
    # The curves (a noisy subset scan, say) call "narrow" the worst per removed weight; measured alone on the
    # verification data, "mid" is far worse: verify backs off "mid", and records the measurement that decided it.
    curves = _synthetic_curves()
    pick = Pick({"wide": 0.9, "narrow": 0.6, "mid": 0.8}, 0.0, {})
    truth = {"wide": 0.0, "narrow": 0.0, "mid": 0.05}

    def evaluate(allocation):
        return DENSE - sum(truth[name] * (s > 0.5) for name, s in allocation.items())

    measured = {}

    def layer_drop(name, sparsity):
        measured[(name, sparsity)] = drop = DENSE - evaluate({name: sparsity})
        return drop, drop - 0.01, drop + 0.01

    result = verify(pick, curves, evaluate, max_drop=0.01, step=0.1, layer_drop=layer_drop)
    assert [step.backed_off for step in result.steps] == [None, "mid", "mid", "mid"]  # 0.8 → 0.7 → 0.6 → 0.5
    assert result.steps[1].backed_off_drop == pytest.approx((0.05, 0.04, 0.06))
    assert result.within_bound and result.allocation == {"wide": 0.9, "narrow": 0.6, "mid": 0.5}
    assert {name for name, _ in measured} == {"wide", "narrow", "mid"}  # each target measured alone
    # Without layer_drop, verify measures each target alone with evaluate itself: the same decisions.
    assert verify(pick, curves, evaluate, max_drop=0.01, step=0.1).allocation == result.allocation


def test_verify_backs_off_to_the_next_measured_level_when_the_step_is_larger():
    curves = _synthetic_curves()
    pick = ThresholdPicker(max_drop=0.02).pick(curves)
    result = verify(pick, curves, _joint(interaction=0.01), max_drop=0.03, step=0.25)
    assert result.steps[1].allocation["narrow"] == pytest.approx(0.5)


def test_verify_keeps_the_pick_when_it_is_already_within():
    curves = _synthetic_curves()
    pick = ThresholdPicker(max_drop=0.005).pick(curves)
    result = verify(pick, curves, _joint(interaction=0.0), max_drop=0.02)
    assert len(result.steps) == 1 and result.within_bound and result.allocation == pick.allocation


def test_verify_stops_at_dense_when_the_bound_cannot_be_met():
    curves = _synthetic_curves()
    pick = ThresholdPicker(max_drop=0.02).pick(curves)
    # An evaluate that never reproduces the dense reference (another split, say).
    result = verify(pick, curves, lambda allocation: DENSE - 0.1, max_drop=0.03, reference=DENSE)
    assert not result.within_bound
    assert result.allocation == dict.fromkeys(pick.allocation, 0.0)
    assert result.measured_drop == pytest.approx(0.1)
    assert all(step.measured_drop > 0.03 for step in result.steps)
    # One evaluation for the pick, then one per 0.05 step down: 0.9, 0.6 and 0.8 need 18 + 12 + 16.
    assert len(result.steps) == 1 + 18 + 12 + 16


def test_verify_measures_the_dense_reference_with_its_own_evaluate():
    curves = _synthetic_curves()  # dense 0.9 on the scan's subset
    pick = ThresholdPicker(max_drop=0.02).pick(curves)
    on_other_data = _joint(interaction=0.0)
    result = verify(pick, curves, lambda allocation: on_other_data(allocation) - 0.05, max_drop=0.06)
    assert result.reference == pytest.approx(DENSE - 0.05)
    assert result.steps[0].measured_drop == pytest.approx(DENSE - on_other_data(pick.allocation))
    assert len(result.steps) == 1  # the 0.05 offset is not mistaken for a drop


def test_verify_rejects_a_non_positive_step():
    curves = _synthetic_curves()
    with pytest.raises(UsageError, match="back-off step"):
        verify(Pick({}, 0.0, {}), curves, _joint(0.0), max_drop=0.01, step=0.0)


def test_verify_on_a_real_model(tiny_model, tiny_data):
    # Train briefly so that pruning costs accuracy.
    optimizer = torch.optim.Adam(tiny_model.parameters(), lr=0.05)
    tiny_model.train()
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(tiny_model(tiny_data.train.x), tiny_data.train.y).backward()
        optimizer.step()
    tiny_model.eval()
    targets = find_targets(tiny_model)
    scores = compute_scores(tiny_model, targets, "magnitude")
    pruning = WeightPruning(tiny_model, targets, scores)
    evaluate = model_evaluator(pruning, Evaluator(tiny_model, tiny_data.val, device="cpu"))
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    dense = evaluate({})
    curves = Curves(
        "accuracy",
        "magnitude",
        CurvePoint(0.0, dense, dense, dense, len(tiny_data.val)),
        {
            t.name: Curve(
                t.name,
                t.numel,
                0,
                [CurvePoint(s, v, v, v, len(tiny_data.val)) for s in (0.3, 0.6, 0.9) for v in [evaluate({t.name: s})]],
            )
            for t in targets
        },
    )
    pick = Pick(dict.fromkeys(curves.curves, 0.9), 0.0, {})  # far too aggressive jointly
    result = verify(pick, curves, evaluate, max_drop=0.0, step=0.3)

    assert result.steps[0].measured_drop > 0  # pruning everything to 90% hurts
    assert len(result.steps) > 1 and result.within_bound  # dense always satisfies a zero drop
    assert result.measured_drop == pytest.approx(dense - evaluate(result.allocation))
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())  # weights restored


def test_model_evaluator_scores_a_loss_as_its_negative(tiny_model, tiny_data):
    """Verify compares scores, higher is better: a lower-is-better metric (loss) is scored as minus itself."""
    targets = find_targets(tiny_model)
    evaluator = Evaluator(tiny_model, tiny_data.val, device="cpu")
    pruning = WeightPruning(tiny_model, targets, compute_scores(tiny_model, targets))
    assert model_evaluator(pruning, evaluator, metric="loss")({}) == -evaluator.evaluate().loss


