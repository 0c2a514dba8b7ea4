import pytest
import torch

from prunescope.apply import prune
from prunescope.checkpoint import load_checkpoint, load_extra_state, plain_state_dict
from prunescope.criteria import compute_scores
from prunescope.errors import PrunescopeError, UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import compute_masks, make_permanent
from prunescope.models import build_model, model_spec
from prunescope.targets import effective_weight, find_targets
from prunescope.train import TrainConfig, finetune, train


def _mlp(data, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", data.input_shape, data.num_classes, hidden=[16])


def _spec(data):
    return model_spec("mlp", data.input_shape, data.num_classes, hidden=[16])


def _dense(data):
    model = _mlp(data)
    train(model, data, TrainConfig(epochs=3, lr=0.1, batch_size=32), device="cpu")
    return model


def _masks(model, sparsity=0.8, criterion="magnitude"):
    targets = find_targets(model)
    scores = compute_scores(model, targets, criterion)
    return targets, compute_masks(scores, {t.name: sparsity for t in targets})


def _assert_zeros_exactly_where_pruned(model, targets, masks):
    for t in targets:
        weight = effective_weight(model, t)
        assert torch.equal(weight == 0, ~masks[t.name]), t.name


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=4, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=0.05, batch_size=16),
        TrainConfig(epochs=4, optimizer="adamw", lr=0.05, weight_decay=0.5, batch_size=16),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_every_epoch(tiny_model, tiny_data, config):
    targets, masks = _masks(tiny_model, 0.7)
    before = {t.name: effective_weight(tiny_model, t).clone() for t in targets}
    checked = []

    def check(record):
        _assert_zeros_exactly_where_pruned(tiny_model, targets, masks)
        # The forward pass uses the same tensor: the pruning hook recomputes it as orig * mask.
        tiny_model(tiny_data.val.x[:2])
        for t in targets:
            assert torch.equal(getattr(tiny_model.get_submodule(t.module), t.param) == 0, ~masks[t.name])
        checked.append(record.epoch)

    result = finetune(tiny_model, tiny_data, targets, masks, config, device="cpu", on_epoch=check)
    assert checked == [1, 2, 3, 4]
    # The kept weights did train.
    for t in targets:
        kept = masks[t.name]
        assert not torch.equal(effective_weight(result.model, t)[kept], before[t.name][kept])
    # Masks stay applied after fine-tuning; make_permanent bakes them into plain parameters.
    assert all(hasattr(tiny_model.get_submodule(t.module), t.param + "_mask") for t in targets)
    make_permanent(tiny_model)
    assert not any(name.endswith("_orig") for name, _ in tiny_model.named_parameters())
    _assert_zeros_exactly_where_pruned(tiny_model, targets, masks)


def test_finetune_recovers_accuracy_of_a_heavily_pruned_model(tiny_data):
    model = _dense(tiny_data)
    targets = find_targets(model)
    masks = prune(model, {t.name: 0.8 for t in targets}, criterion="random")
    one_shot = Evaluator(model, tiny_data.val, device="cpu").evaluate().accuracy
    assert one_shot < 0.75  # the random 80% cut really hurts
    result = finetune(model, tiny_data, targets, masks, TrainConfig(epochs=5, lr=0.1, batch_size=32), device="cpu")
    recovered = Evaluator(result.model, tiny_data.val, device="cpu").evaluate().accuracy
    assert recovered >= one_shot + 0.2
    _assert_zeros_exactly_where_pruned(result.model, targets, masks)


def test_killed_finetune_resumes_with_masks_applied_and_the_same_result(tiny_data, tmp_path):
    config = TrainConfig(epochs=4, lr=0.1, momentum=0.9, weight_decay=0.05, batch_size=32)
    dense = _dense(tiny_data)
    targets, masks = _masks(dense, 0.8)
    dense_state = {k: v.clone() for k, v in dense.state_dict().items()}

    straight = finetune(dense, tiny_data, targets, masks, config, device="cpu")
    expected = plain_state_dict(straight.model)

    path = tmp_path / "finetune.pt"

    def kill_after_two(record):
        if record.epoch == 2:
            raise Killed

    first = _mlp(tiny_data)
    first.load_state_dict(dense_state)
    with pytest.raises(Killed):
        finetune(first, tiny_data, targets, masks, config, device="cpu", checkpoint=path,
                 model_spec=_spec(tiny_data), on_epoch=kill_after_two)
    saved_masks = load_extra_state(path)["masks"]
    assert all(torch.equal(saved_masks[name], masks[name]) for name in masks)

    # Resume into a fresh, unpruned model without passing the masks: they come from the checkpoint.
    epochs_run = []
    resumed = train(_mlp(tiny_data, seed=99), tiny_data, config, device="cpu", checkpoint=path,
                    model_spec=_spec(tiny_data), on_epoch=lambda r: epochs_run.append(r.epoch))
    assert epochs_run == [3, 4]
    _assert_zeros_exactly_where_pruned(resumed.model, targets, masks)
    got = plain_state_dict(resumed.model)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    # The saved file holds the baked weights, zeros included.
    reloaded = load_checkpoint(path).model
    _assert_zeros_exactly_where_pruned(reloaded, targets, masks)


def test_resume_with_other_masks_is_refused(tiny_data, tmp_path):
    config = TrainConfig(epochs=2, lr=0.1, batch_size=32)
    path = tmp_path / "finetune.pt"
    model = _mlp(tiny_data)
    targets, masks = _masks(model, 0.5)
    finetune(model, tiny_data, targets, masks, TrainConfig(epochs=1, lr=0.1, batch_size=32), device="cpu",
             checkpoint=path, model_spec=_spec(tiny_data))
    _, other = _masks(_mlp(tiny_data), 0.5, criterion="random")
    with pytest.raises(UsageError, match="other masks"):
        finetune(_mlp(tiny_data), tiny_data, targets, other, config, device="cpu", checkpoint=path,
                 model_spec=_spec(tiny_data))


def test_early_stop_keeps_the_best_epoch(tiny_data, tmp_path):
    model = _dense(tiny_data)
    targets, masks = _masks(model, 0.9, criterion="random")
    states = {}

    def remember(record):
        states[record.epoch] = {k: v.clone() for k, v in plain_state_dict(model).items()}

    # A high constant learning rate makes val accuracy wander, so it stops improving soon.
    config = TrainConfig(epochs=30, lr=0.5, schedule="constant", batch_size=16)
    path = tmp_path / "finetune.pt"
    result = finetune(model, tiny_data, targets, masks, config, patience=2, device="cpu", on_epoch=remember,
                      checkpoint=path, model_spec=_spec(tiny_data))
    accuracies = [r.val_accuracy for r in result.history]
    best = accuracies.index(max(accuracies)) + 1
    assert result.stopped_early
    assert result.best_epoch == best and result.best.val_accuracy == max(accuracies)
    assert len(result.history) == best + 2 < 30
    kept = plain_state_dict(result.model)
    assert all(torch.equal(kept[k], states[best][k]) for k in kept)
    assert not all(torch.equal(kept[k], states[len(accuracies)][k]) for k in kept)
    assert Evaluator(result.model, tiny_data.val, device="cpu").evaluate().accuracy == max(accuracies)
    _assert_zeros_exactly_where_pruned(result.model, targets, masks)

    # Calling again with the finished checkpoint trains nothing and gives the same best model.
    again = finetune(_mlp(tiny_data, seed=5), tiny_data, targets, masks, config, patience=2, device="cpu",
                     checkpoint=path, model_spec=_spec(tiny_data), on_epoch=lambda r: pytest.fail("trained again"))
    assert again.stopped_early and again.best_epoch == best
    assert all(torch.equal(plain_state_dict(again.model)[k], kept[k]) for k in kept)


def test_divergence_during_finetune_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    path = tmp_path / "finetune.pt"
    model = _mlp(tiny_data)
    targets, masks = _masks(model, 0.5)
    finetune(model, tiny_data, targets, masks, TrainConfig(epochs=1), device="cpu", checkpoint=path,
             model_spec=_spec(tiny_data))
    good = load_checkpoint(path).model.state_dict()
    poisoned = tiny_data.__class__(**{**tiny_data.__dict__, "train": tiny_data.train.__class__(
        tiny_data.train.x * float("nan"), tiny_data.train.y)})
    with pytest.raises(PrunescopeError, match=r"diverged at epoch 2.*last good checkpoint") as info:
        finetune(_mlp(tiny_data), poisoned, targets, masks, TrainConfig(epochs=2), device="cpu", checkpoint=path,
                 model_spec=_spec(tiny_data))
    assert "\n" not in str(info.value)
    kept = load_checkpoint(path)
    assert all(torch.equal(good[k], kept.model.state_dict()[k]) for k in good)
    assert len(kept.meta["history"]) == 1
    _assert_zeros_exactly_where_pruned(kept.model, targets, masks)


def test_bad_finetune_input(tiny_model, tiny_data):
    targets, masks = _masks(tiny_model, 0.5)
    with pytest.raises(UsageError, match="needs the masks"):
        finetune(tiny_model, tiny_data, targets, {}, TrainConfig(epochs=1), device="cpu")
    with pytest.raises(UsageError, match="patience"):
        finetune(tiny_model, tiny_data, targets, masks, TrainConfig(epochs=1), patience=0, device="cpu")
    with pytest.raises(UsageError, match=r"unknown layers nope\.weight"):
        finetune(tiny_model, tiny_data, targets, {"nope.weight": torch.ones(2, dtype=torch.bool)},
                 TrainConfig(epochs=1), device="cpu")
    with pytest.raises(UsageError, match=r"mask of fc1\.weight has shape"):
        finetune(tiny_model, tiny_data, targets, {**masks, "fc1.weight": torch.ones(3, 3, dtype=torch.bool)},
                 TrainConfig(epochs=1), device="cpu")
