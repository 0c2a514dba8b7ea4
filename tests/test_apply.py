import json

import pytest
import torch

from prunescope.apply import export, load_allocation, prune
from prunescope.checkpoint import load_checkpoint
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.models import build_from_spec, build_model, model_spec
from prunescope.report.schema import document
from prunescope.targets import effective_weight, find_targets

ALLOCATION = {"conv.weight": 0.5, "fc1.weight": 0.9, "fc2.weight": 0.333}


def _zeros(model, target):
    return int((effective_weight(model, target) == 0).sum())


@pytest.mark.parametrize("criterion", ["magnitude", "lamp", "random", "taylor"])
def test_prune_removes_exactly_round_s_n_per_target(tiny_model, tiny_data, criterion):
    masks = prune(tiny_model, ALLOCATION, criterion=criterion, data=tiny_data)
    for t in find_targets(tiny_model):
        expected = removed_count(ALLOCATION[t.name], t.numel)
        assert _zeros(tiny_model, t) == expected == int((~masks[t.name]).sum())
        # Kept as a torch.nn.utils.prune re-parametrisation, so training keeps the zeros.
        assert torch.equal(tiny_model.get_submodule(t.module).weight_mask.bool(), masks[t.name])


def test_prune_removes_the_smallest_magnitudes(tiny_model):
    fc1 = find_targets(tiny_model, include=["fc1"])[0]
    original = tiny_model.fc1.weight.detach().abs().clone()
    masks = prune(tiny_model, {"fc1.weight": 0.5}, include=["fc1"])
    assert original[~masks["fc1.weight"]].max() <= original[masks["fc1.weight"]].min()
    assert _zeros(tiny_model, fc1) == fc1.numel // 2
    assert not hasattr(tiny_model.conv, "weight_mask")  # excluded targets untouched


def test_pruning_again_never_restores_a_weight(tiny_model):
    targets = find_targets(tiny_model)
    first = prune(tiny_model, {t.name: 0.5 for t in targets})
    lower = prune(tiny_model, {t.name: 0.3 for t in targets})  # asks for less: keeps the zeros it has
    higher = prune(tiny_model, {t.name: 0.8 for t in targets})
    for t in targets:
        assert torch.equal(lower[t.name], first[t.name])
        assert not (~first[t.name] & higher[t.name]).any()
        assert _zeros(tiny_model, t) == removed_count(0.8, t.numel)
        assert len(tiny_model.get_submodule(t.module)._forward_pre_hooks) == 1  # one pruning hook, not a stack


def test_prune_refuses_allocations_for_other_targets(tiny_model):
    weights = {name: p.clone() for name, p in tiny_model.named_parameters()}
    with pytest.raises(UsageError, match=r"unknown targets head\.weight; missing targets fc2\.weight") as info:
        prune(tiny_model, {"conv.weight": 0.5, "fc1.weight": 0.5, "head.weight": 0.5})
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"outside \[0, 1\)"):
        prune(tiny_model, {**ALLOCATION, "fc2.weight": 1.0})
    with pytest.raises(UsageError, match="not a number"):
        prune(tiny_model, {**ALLOCATION, "fc2.weight": "half"})
    # Nothing was touched by the refused calls.
    assert all(torch.equal(p, weights[name]) for name, p in tiny_model.named_parameters())


def test_load_allocation_reads_pick_files_and_bare_objects(tiny_model, tmp_path):
    targets = find_targets(tiny_model)
    pick = tmp_path / "pick.json"
    pick.write_text(json.dumps(document(
        "pick", {"picker": "threshold"}, model={"name": "tiny"}, dataset={"name": "tiny"}, picker="threshold",
        allocation=ALLOCATION, global_sparsity=0.8, bound=0.005, pick={}, verified={},
    )))
    assert load_allocation(pick, targets) == ALLOCATION
    bare = tmp_path / "allocation.json"
    bare.write_text(json.dumps(ALLOCATION))
    assert load_allocation(bare, [t.name for t in targets]) == ALLOCATION
    masks = prune(tiny_model, load_allocation(bare, targets))
    assert int((~masks["fc1.weight"]).sum()) == removed_count(0.9, tiny_model.fc1.weight.numel())


def test_load_allocation_refuses_another_models_pick(tiny_model, tmp_path):
    other = build_model("cnn", (1, 4, 4), 3)
    other_targets = find_targets(other)
    path = tmp_path / "pick.json"
    path.write_text(json.dumps({"allocation": {t.name: 0.5 for t in other_targets}}))
    expected = r"pick\.json does not fit .*unknown targets conv1\.conv\.weight.*missing targets conv\.weight"
    with pytest.raises(UsageError, match=expected):
        load_allocation(path, find_targets(tiny_model))
    for text, message in [("{not json", "not valid JSON"), ("[0.5]", "neither a pick"),
                          ('{"allocation": [1]}', "neither a pick")]:
        path.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_allocation(path, find_targets(tiny_model))
    with pytest.raises(UsageError, match="does not exist"):
        load_allocation(tmp_path / "missing.json", find_targets(tiny_model))


def test_export_reloads_as_a_plain_model_with_the_same_outputs(tiny_data, tmp_path):
    spec = model_spec("mlp", tiny_data.input_shape, tiny_data.num_classes, hidden=[16])
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    targets = find_targets(model)
    prune(model, {t.name: 0.7 for t in targets})
    path = export(model, tmp_path / "pruned.pt", spec, tiny_data.spec, {"note": "test"})

    saved = load_checkpoint(path)
    assert not any(k.endswith(("_orig", "_mask")) for k in saved.model.state_dict())
    assert saved.meta["note"] == "test"
    assert saved.meta["measured_sparsity"] == {t.name: removed_count(0.7, t.numel) / t.numel for t in targets}
    x = tiny_data.val.x
    with torch.no_grad():
        assert torch.equal(saved.model(x), model(x))
    for t in targets:
        assert _zeros(saved.model, t) == removed_count(0.7, t.numel)
    # The stored state dict is plain: a bare copy of the architecture loads it with plain torch.
    state = torch.load(path, weights_only=True)["state_dict"]
    bare = build_from_spec(spec)
    bare.load_state_dict(state)
    assert hasattr(model.get_submodule(targets[0].module), "weight_mask")  # the live model keeps its masks


def test_load_allocation_checks_the_model_spec_when_given(tmp_path):
    spec = model_spec("mlp", (1, 4, 4), 3, hidden=[16])
    wider = model_spec("mlp", (1, 4, 4), 3, hidden=[32])  # same target names, other shapes
    targets = find_targets(build_from_spec(spec))
    path = tmp_path / "pick.json"
    path.write_text(json.dumps({"model": wider, "allocation": {t.name: 0.5 for t in targets}}))
    assert load_allocation(path, targets) == {t.name: 0.5 for t in targets}  # names alone match
    with pytest.raises(UsageError, match=r"picked for model 'mlp' \{'hidden': \[32\]\}"):
        load_allocation(path, targets, model_spec=spec)
    path.write_text(json.dumps({"model": spec, "allocation": {t.name: 0.5 for t in targets}}))
    assert load_allocation(path, targets, model_spec=spec) == {t.name: 0.5 for t in targets}
