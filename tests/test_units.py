"""Weight tensors and channel groups behind one Unit protocol: found, sized, masked and restored alike."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.scan import scan
from prunescope.units import GRANULARITIES, find_units


@pytest.mark.parametrize("granularity", list(GRANULARITIES))
def test_units_of_either_granularity_mask_restore_and_measure_alike(tiny_model, tiny_data, granularity):
    units = find_units(tiny_model, tiny_data, granularity, "magnitude" if granularity == "weight" else "l2")
    assert units.granularity == granularity and units.units
    assert [u.name for u in units.units] == units.every  # nothing excluded: every unit chosen
    dense = units.footprint({})
    assert dense.params == sum(p.numel() for p in tiny_model.parameters())
    assert dense.macs == count_macs(tiny_model, tiny_data.input_shape).dense
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    allocation = {u.name: 0.5 for u in units.units}
    with units.applied(allocation) as model:
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert zeros > 0
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())  # bit-identical restore
    pruned = units.footprint(allocation)
    assert pruned.params < dense.params and pruned.macs < dense.macs
    assert 0 < units.removed_fraction(allocation) < 1
    for unit in units.units:  # a weight unit holds its weights; a channel carries at least one parameter
        assert unit.size >= 1 and unit.params >= unit.size and unit.macs > 0


def test_weight_units_carry_their_weights_and_macs(tiny_model, tiny_data):
    units = find_units(tiny_model, tiny_data, "weight", "magnitude", exclude=["fc2*"])
    per_weight = count_macs(tiny_model, tiny_data.input_shape).per_weight
    assert [u.name for u in units.units] == ["conv.weight", "fc1.weight"]
    assert units.every == ["conv.weight", "fc1.weight", "fc2.weight"]
    for unit in units.units:
        weight = tiny_model.get_parameter(unit.name)
        assert (unit.size, unit.params, unit.macs) == (weight.numel(), weight.numel(), per_weight[unit.name][0])


def test_a_channel_scan_traces_the_model_once(tiny_model, tiny_data, monkeypatch):
    """One dependency graph of the model (and one of the pruned copy the masking check compares with)."""
    traces = []
    build = tp.DependencyGraph.build_dependency

    def counting(self, model, *args, **kwargs):
        traces.append(model is tiny_model)
        return build(self, model, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counting)
    curves = scan(tiny_model, tiny_data, criterion="l2", granularity="channel", levels=[0.5], strategy="grid",
                  device="cpu", include=["conv"])
    assert traces.count(True) == 1 and len(traces) == 2
    assert list(curves.curves) == ["conv"]


def test_unknown_granularity_and_round_to_on_weights_are_refused(tiny_model, tiny_data):
    with pytest.raises(UsageError, match="unknown granularity 'filter'"):
        find_units(tiny_model, tiny_data, "filter", "l2")
    with pytest.raises(UsageError, match="--round-to applies to channel scans"):
        find_units(tiny_model, tiny_data, "weight", "magnitude", round_to=8)


@pytest.mark.parametrize("ties", [False, True])
def test_a_single_targets_mask_is_the_one_compute_masks_gives(tiny_model, ties):
    from prunescope.masks import compute_masks
    from prunescope.targets import find_targets
    from prunescope.units import WeightPruning

    targets = find_targets(tiny_model)
    generator = torch.Generator().manual_seed(0)
    scores = {t.name: torch.randn(t.shape, generator=generator) for t in targets}
    if ties:  # runs of equal scores around every cut
        scores = {name: (score * 2).round() for name, score in scores.items()}
    pruning = WeightPruning(tiny_model, targets, scores)
    for target in targets:
        for sparsity in (0.1, 0.33, 0.5, 0.9, 0.99):
            expected = compute_masks(scores, {target.name: sparsity})[target.name]
            assert torch.equal(pruning.masks(target.name, sparsity)[target.name], expected), (target.name, sparsity)
