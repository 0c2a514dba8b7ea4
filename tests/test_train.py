import pytest
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.errors import PrunescopeError, UsageError
from prunescope.models import build_model, model_spec
from prunescope.train import TrainConfig, train


def _fresh(data, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", data.input_shape, data.num_classes, hidden=[16])


def _spec(data):
    return model_spec("mlp", data.input_shape, data.num_classes, hidden=[16])


def test_training_learns_and_records_history(tiny_data):
    result = train(_fresh(tiny_data), tiny_data, TrainConfig(epochs=5, lr=0.1, batch_size=32), device="cpu")
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5]
    assert result.final.val_accuracy > 0.9  # class means are 2σ apart
    assert result.history[-1].train_loss < result.history[0].train_loss
    # Cosine schedule: the lr used in the last epoch is below the peak.
    assert result.history[0].lr == pytest.approx(0.1) and result.history[-1].lr < 0.1


def test_same_seed_gives_identical_weights(tiny_data):
    config = TrainConfig(epochs=2, optimizer="adamw", lr=1e-2, batch_size=32, label_smoothing=0.1)
    a = train(_fresh(tiny_data), tiny_data, config, device="cpu").model
    b = train(_fresh(tiny_data), tiny_data, config, device="cpu").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path):
    config = TrainConfig(epochs=4, lr=0.1, batch_size=32)
    straight = train(_fresh(tiny_data), tiny_data, config, device="cpu").model

    path = tmp_path / "model.pt"

    class Killed(Exception):
        pass

    def kill_after_two(record):
        if record.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(_fresh(tiny_data), tiny_data, config, device="cpu", checkpoint=path, model_spec=_spec(tiny_data),
              on_epoch=kill_after_two)
    assert len(load_checkpoint(path).meta["history"]) == 2
    epochs_run = []
    resumed = train(_fresh(tiny_data, seed=99), tiny_data, config, device="cpu", checkpoint=path,
                    model_spec=_spec(tiny_data), on_epoch=lambda r: epochs_run.append(r.epoch))
    assert epochs_run == [3, 4]
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    for x, y in zip(straight.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path):
    path = tmp_path / "model.pt"
    spec = _spec(tiny_data)
    train(_fresh(tiny_data), tiny_data, TrainConfig(epochs=1), device="cpu", checkpoint=path, model_spec=spec)
    with pytest.raises(UsageError, match=r"other settings \(lr\)"):
        train(_fresh(tiny_data), tiny_data, TrainConfig(epochs=2, lr=0.2), device="cpu", checkpoint=path,
              model_spec=_spec(tiny_data))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    path = tmp_path / "model.pt"
    train(_fresh(tiny_data), tiny_data, TrainConfig(epochs=1), device="cpu", checkpoint=path,
          model_spec=_spec(tiny_data))
    good = load_checkpoint(path).model.state_dict()
    # Resume for a second epoch on data that makes the loss infinite.
    poisoned = tiny_data.__class__(**{**tiny_data.__dict__, "train": tiny_data.train.__class__(
        tiny_data.train.x * float("inf"), tiny_data.train.y)})
    with pytest.raises(PrunescopeError, match=r"diverged at epoch 2.*last good checkpoint"):
        train(_fresh(tiny_data), poisoned, TrainConfig(epochs=2), device="cpu", checkpoint=path,
              model_spec=_spec(tiny_data))
    kept = load_checkpoint(path).model.state_dict()
    assert all(torch.equal(good[k], kept[k]) for k in good)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"epochs": 0}, "epochs"), ({"optimizer": "lbfgs"}, "optimizer"), ({"lr": -1.0}, "learning rate"),
     ({"schedule": "step"}, "schedule"), ({"label_smoothing": 1.0}, "label smoothing"), ({"batch_size": 0}, "batch")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(**kwargs)
