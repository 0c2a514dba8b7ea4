import pytest
import torch
from scipy import stats
from sklearn.metrics import f1_score
from torch import nn

from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, macro_f1, wilson_interval


class FixedLogits(nn.Module):
    """Returns stored logits for the indices passed as inputs."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index.long().squeeze(1)]


def _case(n: int = 200, classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return FixedLogits(logits), Split(torch.arange(n).float().unsqueeze(1), labels), logits, labels


def test_metrics_match_their_definitions():
    model, split, logits, labels = _case()
    m = Evaluator(model, split, device="cpu", batch_size=7).evaluate()
    predictions = logits.argmax(1)
    assert m.n == 200
    assert m.accuracy == pytest.approx((predictions == labels).float().mean().item())
    assert m.macro_f1 == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert m.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_macro_f1_with_a_class_never_predicted_matches_sklearn():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0, 0])
    assert macro_f1(predictions, labels, 3) == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_wilson_interval_matches_scipy():
    for k, n in [(0, 10), (7, 10), (180, 200), (50, 50)]:
        expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = wilson_interval(k, n)
        assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_subset_is_seeded_and_its_interval_is_wider():
    model, split, _, _ = _case(n=1000, classes=2)
    full = Evaluator(model, split, device="cpu").evaluate()
    a = Evaluator(model, split, device="cpu", subset=100, seed=1).evaluate()
    b = Evaluator(model, split, device="cpu", subset=100, seed=1).evaluate()
    assert a == b and a.n == 100
    assert a.accuracy_ci[1] - a.accuracy_ci[0] > full.accuracy_ci[1] - full.accuracy_ci[0]
    assert a.accuracy_ci[0] <= a.accuracy <= a.accuracy_ci[1]


def test_bootstrap_interval_brackets_the_accuracy():
    model, split, _, _ = _case(n=300)
    m = Evaluator(model, split, device="cpu", interval="bootstrap").evaluate()
    low, high = m.accuracy_ci
    assert low < m.accuracy < high
    assert high - low == pytest.approx(2 * 1.96 * (m.accuracy * (1 - m.accuracy) / 300) ** 0.5, rel=0.25)


def test_user_metric_and_training_flag_restored():
    model, split, logits, labels = _case()
    model.train()
    metrics = {"top2": lambda out, y: (out.topk(2, 1).indices == y[:, None]).any(1).float().mean().item()}
    m = Evaluator(model, split, device="cpu", metrics=metrics).evaluate()
    expected = (logits.topk(2, 1).indices == labels[:, None]).any(1).float().mean().item()
    assert m.get("top2") == pytest.approx(expected)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"subset": 0}, "subset"), ({"batch_size": 0}, "batch size"), ({"interval": "exact"}, "interval")],
)
def test_bad_arguments(kwargs, message):
    model, split, _, _ = _case()
    with pytest.raises(UsageError, match=message):
        Evaluator(model, split, device="cpu", **kwargs)


def test_unknown_metric_name():
    model, split, _, _ = _case()
    with pytest.raises(UsageError, match="unknown metric 'auc'"):
        Evaluator(model, split, device="cpu").evaluate().get("auc")


@pytest.mark.parametrize("interval", ["wilson", "bootstrap"])
def test_accuracy_alone_is_what_evaluate_gives(interval):
    model, split, _, _ = _case(n=300)
    evaluator = Evaluator(model, split, device="cpu", subset=120, seed=4, interval=interval, batch_size=50)
    metrics = evaluator.evaluate()
    correct = evaluator.correct.clone()
    evaluator.correct = None
    assert evaluator.accuracy() == (metrics.accuracy, metrics.accuracy_ci)
    assert torch.equal(evaluator.correct, correct)


def test_a_model_partly_in_training_mode_is_evaluated_in_eval_mode_and_left_as_before():
    fixed, split, logits, _ = _case()
    model = nn.Sequential(fixed, nn.Dropout(0.5)).eval()
    model[1].train()  # one submodule in training mode, the root not: its dropout must be off while evaluated
    assert torch.equal(Evaluator(model, split, device="cpu").logits(), logits)
    assert not any(module.training for module in model.modules())  # as eval() then train(False) leave it
