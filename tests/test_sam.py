import pytest
import torch

from prunescope.errors import UsageError
from prunescope.train import TrainConfig, train
from prunescope.train.sam import SAM
from tests.conftest import TinyNet


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_sam_with_rho_zero_is_its_base_optimiser_step_for_step(tiny_data, base):
    # TinyNet has BatchNorm: its running statistics and batch count must also match.
    runs = {}
    for optimizer, rho in ((base, None), ("sam" if base == "sgd" else "sam-adamw", 0.0)):
        torch.manual_seed(0)
        config = TrainConfig(epochs=2, optimizer=optimizer, sam_rho=rho, lr=0.05 if base == "sgd" else 1e-2,
                             batch_size=32)
        runs[optimizer] = _weights(train(TinyNet(), tiny_data, config, device="cpu").model)
    plain, sam = runs.values()
    assert plain.keys() == sam.keys()
    for name in plain:
        assert torch.equal(plain[name], sam[name]), name


def test_sam_steps_with_the_gradient_at_the_ascended_point():
    # L(w) = sum(w^4)/4, grad w^3. SAM with plain SGD (lr 1, no momentum) moves w by -(w + e)^3.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    rho = 0.5
    optimizer = SAM(torch.optim.SGD([w], lr=1.0), rho)

    def loss_fn():
        return (w**4).sum() / 4

    optimizer.zero_grad()
    loss_fn().backward()
    g = w.grad.clone()
    e = rho * g / g.norm()
    expected = w.detach() - (w.detach() + e) ** 3

    def closure():
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert torch.allclose(w.detach(), expected)


def test_sam_rho_moves_training_away_from_the_base():
    data_seed = 0
    from tests.conftest import make_dataset

    data = make_dataset(seed=data_seed)
    out = []
    for optimizer, rho in (("sgd", None), ("sam", 0.2)):
        torch.manual_seed(0)
        model = train(TinyNet(), data, TrainConfig(epochs=1, optimizer=optimizer, sam_rho=rho, batch_size=32),
                      device="cpu").model
        out.append(model.fc2.weight.detach().clone())
    assert not torch.equal(*out)


def test_rho_with_an_optimiser_that_lacks_it_is_refused():
    with pytest.raises(UsageError, match="no rho"):
        TrainConfig(optimizer="sgd", sam_rho=0.1)
    with pytest.raises(UsageError, match="at least 0"):
        TrainConfig(optimizer="sam", sam_rho=-1.0)
    assert TrainConfig(optimizer="sam").sam_rho == 0.05
