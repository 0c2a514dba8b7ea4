import copy
import itertools

import pytest
import torch

from prunescope.checkpoint import plain_state_dict
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.models import build_model, model_spec
from prunescope.pick.baselines import allocate, uniform
from prunescope.targets import effective_weight, find_targets
from prunescope.train import TrainConfig, gradual_prune, iterative_schedule, polynomial_schedule

STEP = TrainConfig(epochs=1, lr=0.05, batch_size=32, weight_decay=0.01)


def _zeros(model, targets):
    return {t.name: effective_weight(model, t) == 0 for t in targets}


def test_polynomial_schedule_follows_the_agp_formula():
    initial, final, n = 0.1, 0.9, 5
    values = polynomial_schedule(initial, final, n)
    expected = [final + (initial - final) * (1 - t / n) ** 3 for t in range(1, n + 1)]
    assert values == pytest.approx(expected, abs=1e-15)
    assert values[-1] == final  # exactly, not approximately
    assert values[0] == pytest.approx(0.9 - 0.8 * 0.8**3)
    assert all(a < b for a, b in itertools.pairwise(values))
    # Most of the pruning happens early: the first step takes more than the last.
    assert values[0] - initial > values[-1] - values[-2]
    assert polynomial_schedule(0.0, 0.7, 1) == [0.7]
    assert polynomial_schedule(0.0, 0.8, 4, power=1) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert polynomial_schedule(0.3, 0.3, 3) == [0.3, 0.3, 0.3]


def test_iterative_schedule_removes_a_fifth_of_the_remainder_per_round():
    values = iterative_schedule(0.9, fraction=0.2)
    assert len(values) == 11  # 0.8**10 = 0.107 remaining is not yet 0.1; round 11 gets there
    assert values[-1] == 0.9 and all(v < 0.9 for v in values[:-1])
    remaining = [1.0] + [1 - v for v in values]
    for before, after in itertools.pairwise(remaining[:-1]):
        assert after == pytest.approx(0.8 * before)
    assert remaining[-1] >= 0.8 * remaining[-2] - 1e-12  # the last round removes at most 20%
    # A final sparsity that a round hits exactly is not followed by a sliver of a round.
    assert iterative_schedule(1 - 0.8**2) == pytest.approx([0.2, 0.36]) and len(iterative_schedule(0.36)) == 2
    assert iterative_schedule(0.5, fraction=0.5) == [0.5]
    assert iterative_schedule(0.0) == [0.0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: polynomial_schedule(0.5, 0.2, 3), "schedule ends below its start"),
        (lambda: polynomial_schedule(0.0, 0.8, 0), "at least 1 step"),
        (lambda: polynomial_schedule(0.0, 1.0, 3), "outside"),
        (lambda: polynomial_schedule(0.0, 0.8, 3, power=0), "power"),
        (lambda: iterative_schedule(0.9, fraction=0.0), r"fraction .* \(0, 1\)"),
        (lambda: iterative_schedule(0.9, fraction=1.0), r"fraction .* \(0, 1\)"),
        (lambda: iterative_schedule(0.9, fraction=-0.2), r"fraction .* \(0, 1\)"),
        (lambda: iterative_schedule(1.2), "outside"),
    ],
)
def test_bad_schedules_are_refused(make, message):
    with pytest.raises(UsageError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_gradual_prune_reaches_exact_counts_and_never_unprunes(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    schedule = polynomial_schedule(0.0, 0.8, 4)
    seen = []

    def on_step(step):
        seen.append(_zeros(tiny_model, targets))

    result = gradual_prune(
        tiny_model, tiny_data, lambda s: uniform(targets, s), schedule, STEP, device="cpu", on_step=on_step
    )
    assert [s.sparsity for s in result.steps] == schedule
    final = uniform(targets, 0.8)
    for t in targets:
        assert result.final.removed[t.name] == removed_count(final[t.name], t.numel)
        assert int(seen[-1][t.name].sum()) == removed_count(final[t.name], t.numel)
    total = sum(t.numel for t in targets)
    assert result.final.achieved_sparsity == round(0.8 * total) / total
    for step, sparsity in zip(result.steps, schedule, strict=True):
        assert sum(step.removed.values()) == round(sparsity * total)  # every step exact, measured
        assert step.allocation == pytest.approx(step.requested)
        assert step.val["n"] == len(tiny_data.val.y) and len(step.history) == 1
    for before, after in itertools.pairwise(seen):
        for name in before:
            assert not (before[name] & ~after[name]).any(), "a pruned weight came back"
            assert after[name].sum() >= before[name].sum()
    assert result.to_dict()["schedule"] == schedule


def test_fixed_proportions_scale_the_final_allocation(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    reference = copy.deepcopy(tiny_model)
    final = allocate("global", reference, targets, 0.75)
    assert len(set(final.values())) > 1  # global magnitude: per-target sparsities differ
    schedule = [0.25, 0.5, 0.75]
    result = gradual_prune(
        tiny_model, tiny_data, lambda s: allocate("global", tiny_model, targets, s), schedule, STEP,
        repick=False, device="cpu",
    )
    final_counts = {t.name: removed_count(final[t.name], t.numel) for t in targets}
    assert result.final.removed == final_counts
    for step in result.steps[:-1]:
        scale = step.sparsity / 0.75
        assert sum(step.removed.values()) == round(sum(final_counts.values()) * scale)
        for name, count in step.removed.items():
            assert abs(count - final_counts[name] * scale) <= 1


def test_repicking_a_global_allocation_on_the_current_model(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    seen = []
    result = gradual_prune(
        tiny_model, tiny_data, lambda s: allocate("global", tiny_model, targets, s), [0.3, 0.6, 0.85], STEP,
        device="cpu", on_step=lambda step: seen.append(_zeros(tiny_model, targets)),
    )
    total = sum(t.numel for t in targets)
    assert sum(result.final.removed.values()) == round(0.85 * total)
    for before, after in itertools.pairwise(seen):
        assert all(not (before[n] & ~after[n]).any() for n in before)


def test_gradual_prune_resumes_to_the_same_result(tiny_data, tmp_path):
    def fresh():
        torch.manual_seed(0)
        return build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, hidden=[16])

    spec = model_spec("mlp", tiny_data.input_shape, tiny_data.num_classes, hidden=[16])
    config = TrainConfig(epochs=2, lr=0.05, batch_size=32, weight_decay=0.01)
    schedule = polynomial_schedule(0.0, 0.9, 3)
    model = fresh()
    targets = find_targets(model)
    straight = gradual_prune(model, tiny_data, lambda s: uniform(targets, s), schedule, config, device="cpu")

    class Killed(Exception):
        pass

    epochs = []

    def kill_in_step_two(record):
        epochs.append(record.epoch)
        if len(epochs) == 3:
            raise Killed

    with pytest.raises(Killed):
        gradual_prune(fresh(), tiny_data, lambda s: uniform(targets, s), schedule, config, device="cpu",
                      checkpoint_dir=tmp_path, model_spec=spec, on_epoch=kill_in_step_two)
    resumed_epochs = []
    resumed = gradual_prune(fresh(), tiny_data, lambda s: uniform(targets, s), schedule, config, device="cpu",
                            checkpoint_dir=tmp_path, model_spec=spec, on_epoch=lambda r: resumed_epochs.append(r))
    assert len(resumed_epochs) == 6 - 3  # only the epochs not yet run
    expected, got = plain_state_dict(straight.model), plain_state_dict(resumed.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [s.removed for s in resumed.steps] == [s.removed for s in straight.steps]


def test_gradual_prune_refuses_bad_input(tiny_model, tiny_data):
    targets = find_targets(tiny_model)
    good = lambda s: uniform(targets, s)  # noqa: E731
    with pytest.raises(UsageError, match="goes down at step 3"):
        gradual_prune(tiny_model, tiny_data, good, [0.2, 0.5, 0.4], STEP, device="cpu")
    with pytest.raises(UsageError, match="at least 1 step"):
        gradual_prune(tiny_model, tiny_data, good, [], STEP, device="cpu")
    with pytest.raises(UsageError, match=r"unknown targets other\.weight.*missing targets fc2\.weight"):
        gradual_prune(tiny_model, tiny_data,
                      lambda s: {**{k: v for k, v in uniform(targets, s).items() if k != "fc2.weight"},
                                 "other.weight": s},
                      [0.5], STEP, device="cpu")
    with pytest.raises(UsageError, match="model spec"):
        gradual_prune(tiny_model, tiny_data, good, [0.5], STEP, device="cpu", checkpoint_dir="somewhere")
