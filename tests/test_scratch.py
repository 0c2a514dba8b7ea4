import pytest
import torch
from conftest import make_dataset

import prunescope.train.scratch as scratch_module
from prunescope.apply import prune
from prunescope.checkpoint import plain_state_dict
from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_from_spec, model_spec
from prunescope.targets import effective_weight, find_targets
from prunescope.train import TrainConfig, scratch_epochs, train_scratch

DENSE = TrainConfig(epochs=2, lr=0.05, batch_size=48)


@pytest.fixture
def small_data():
    return make_dataset(n_train=96, n_val=30, n_test=30)


def _spec(data):
    return model_spec("cnn", data.input_shape, data.num_classes)


def _pruned(data, allocation_of):
    torch.manual_seed(0)
    model = build_from_spec(_spec(data))
    targets = find_targets(model)
    masks = prune(model, allocation_of(targets))
    return model, targets, masks


def test_scratch_e_keeps_the_dense_epochs():
    assert scratch_epochs("E", 160, 1000, 100) == 160
    assert scratch_epochs("scratch-e", 7, 10, 10) == 7


def test_scratch_b_follows_the_compute_ratio():
    assert scratch_epochs("B", 160, 1000, 500) == 320
    assert scratch_epochs("B", 10, 1000, 300) == round(10 * 1000 / 300)
    assert scratch_epochs("B", 10, 1000, 100, max_factor=2) == 20  # capped at twice the dense epochs
    assert scratch_epochs("b", 10, 1000, 1000) == 10


def test_scratch_b_epochs_come_from_measured_macs(small_data):
    # Prune the conv layers hard and the linear head lightly: the MAC ratio is not the parameter ratio.
    pruned, targets, masks = _pruned(
        small_data, lambda targets: {t.name: 0.75 if t.kind == "conv" else 0.2 for t in targets}
    )
    dense_macs = count_macs(build_from_spec(_spec(small_data)), small_data.input_shape).dense
    pruned_macs = count_macs(pruned, small_data.input_shape).effective
    assert pruned_macs < dense_macs
    expected = round(DENSE.epochs * dense_macs / pruned_macs)
    params = sum(t.numel for t in targets)
    kept = sum(int(m.sum()) for m in masks.values())
    assert expected != round(DENSE.epochs * params / kept)  # so the test tells MACs from parameters
    assert scratch_module.measure_macs(build_from_spec(_spec(small_data)), small_data.input_shape, targets, masks) == (
        dense_macs, pruned_macs
    )
    result = train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "B", None, None, seed=1, device="cpu")
    assert len(result.history) == expected == scratch_epochs("B", DENSE.epochs, dense_macs, pruned_macs)
    capped = train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "B", dense_macs, pruned_macs, 1,
                           max_factor=1.5, device="cpu")
    assert len(capped.history) == 3
    plain = train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "E", None, None, 1, device="cpu")
    assert len(plain.history) == DENSE.epochs


def test_train_scratch_reinitialises_and_keeps_the_mask(small_data, monkeypatch):
    pruned, targets, masks = _pruned(small_data, lambda targets: {t.name: 0.6 for t in targets})
    starts = []
    real_train = scratch_module.train

    def recording_train(model, *args, **kwargs):
        starts.append(({k: v.clone() for k, v in plain_state_dict(model).items()}, kwargs["masks"]))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(scratch_module, "train", recording_train)
    rng_before = torch.random.get_rng_state()
    result = train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "E", None, None, seed=7, device="cpu")
    train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "E", None, None, seed=7, device="cpu")
    train_scratch(_spec(small_data), small_data, targets, masks, DENSE, "E", None, None, seed=8, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched

    start, given = starts[0]
    assert given is masks
    for t in targets:
        kept = masks[t.name]
        # Fresh initial weights, not the pruned model's surviving ones.
        assert not torch.allclose(start[t.name][kept], effective_weight(pruned, t)[kept])
        # The same mask is held through training: zeros exactly where the pruned model has them.
        assert torch.equal(effective_weight(result.model, t) == 0, ~kept)
        assert hasattr(result.model.get_submodule(t.module), t.param + "_mask")
    # The seed decides the initialisation: the same seed repeats it, another changes it.
    assert all(torch.equal(start[k], starts[1][0][k]) for k in start)
    assert not all(torch.equal(start[k], starts[2][0][k]) for k in start)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("C", 10, 100, 50), "unknown scratch mode"),
        (("B", 0, 100, 50), "dense epochs"),
        (("B", 10, 100, 0), "positive MAC"),
        (("B", 10, 100, 50, 0.5), "max_factor"),
    ],
)
def test_bad_scratch_settings(args, message):
    with pytest.raises(UsageError, match=message):
        scratch_epochs(*args)
