"""Budgets for structured picks: MACs, parameters and latency, met exactly on the physically pruned model."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from prunescope.checkpoint import save_checkpoint
from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.data import load_dataset
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_from_spec, build_model, model_spec
from prunescope.pick import BudgetPicker
from prunescope.pick.choose import choose
from prunescope.pick.registry import make_allocator
from prunescope.report.tables import save_scan
from prunescope.structured.find import find_groups, pruned_copy
from prunescope.structured.groups import ChannelGroups
from prunescope.structured.importance import group_scores
from prunescope.structured.latency import LatencyTable
from prunescope.structured.pruning import ChannelPruning

SHAPE = (1, 16, 16)
DENSE = 0.9
LEVELS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 … 0.95


def _curves(groups: ChannelGroups, granularity: str = "channel") -> Curves:
    """Hand-made curves: group i loses (1 + i % 3) · 0.1 · s² of accuracy at sparsity s (strictly falling)."""
    curves = {
        name: Curve(name, g.width, g.macs, [_point(s, (1 + i % 3) * 0.1 * s**2) for s in LEVELS], g.params)
        for i, (name, g) in enumerate(groups.groups.items())
    }
    return Curves("accuracy", "l2", _point(0.0, 0.0), curves, granularity=granularity)


def _point(sparsity: float, drop: float) -> CurvePoint:
    return CurvePoint(sparsity, DENSE - drop, DENSE - drop, DENSE - drop, 100)


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, SHAPE, 10, **kwargs).eval()


def _pruning(model: nn.Module, round_to: int = 1) -> ChannelPruning:
    groups = find_groups(model, SHAPE)
    return ChannelPruning(groups, group_scores(groups, "l2"), round_to)


def _physical(pruning: ChannelPruning, allocation: dict[str, float]) -> tuple[nn.Module, int, int]:
    """The model pruned physically with ``allocation``, its parameters and its dense MACs per sample."""
    model = pruned_copy(pruning.model, SHAPE, pruning.removal(allocation))
    return model, sum(p.numel() for p in model.parameters()), count_macs(model, SHAPE).dense


def _one_step_back(allocation: dict[str, float], pruning: ChannelPruning):
    """Every allocation with one pruned group given back its last candidate step (``round_to`` more channels kept)."""
    for name, sparsity in allocation.items():
        width = pruning.groups.groups[name].width
        removed = round(sparsity * width)
        if removed:
            kept = min(width, width - removed + pruning.round_to)
            yield {**allocation, name: (width - kept) / width}


def _data(n: int = 32) -> Dataset:
    generator = torch.Generator().manual_seed(0)

    def split() -> Split:
        return Split(torch.randn(n, *SHAPE, generator=generator), torch.arange(n) % 10)

    return Dataset("noise", split(), split(), split(), SHAPE, 10, spec={"name": "noise"})


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _model("resnet20")


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return _model("mlp", hidden=(48, 40))


# --- MACs and parameters ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["resnet", "mlp"])
@pytest.mark.parametrize(("key", "fraction"), [("target_macs", 0.5), ("target_macs", 0.33), ("target_params", 0.4)])
def test_budgets_are_met_exactly_on_the_pruned_model(request, which, key, fraction):
    pruning = _pruning(request.getfixturevalue(which))
    dense = pruning.footprint({})
    target = fraction if key == "target_macs" else int(fraction * dense.params)  # MACs as a fraction, params a count
    pick = BudgetPicker(**{key: target}, footprint=pruning.footprint).pick(_curves(pruning.groups))

    _, params, macs = _physical(pruning, pick.allocation)
    size = (lambda f: f.macs) if key == "target_macs" else (lambda f: f.params)
    limit = fraction * dense.macs if key == "target_macs" else target
    assert (macs if key == "target_macs" else params) <= limit
    assert pick.details["footprint"] == {"params": params, "macs": macs}
    assert pick.details["exact_remaining"] == size(pruning.footprint(pick.allocation))
    assert pick.details["iterations"] == len(pick.details["trials"]) >= 1
    # Not over-met: giving back any one candidate step would break the budget.
    for allocation in _one_step_back(pick.allocation, pruning):
        assert size(pruning.footprint(allocation)) > limit


def test_round_to_keeps_multiples_in_the_pruned_model(resnet):
    pruning = _pruning(resnet, round_to=4)
    pick = BudgetPicker(target_macs=0.5, round_to=4, footprint=pruning.footprint).pick(_curves(pruning.groups))
    model, _, macs = _physical(pruning, pick.allocation)
    kept = {name: model.get_submodule(name).out_channels for name in pruning.groups.groups}
    assert all(n % 4 == 0 for n in kept.values())
    assert kept == pick.details["kept"] and any(n < g.width for n, g in zip(
        kept.values(), pruning.groups.groups.values(), strict=True))
    assert macs <= 0.5 * pruning.footprint({}).macs


def test_a_mac_target_below_the_minimum_is_a_usage_error(resnet):
    pruning = _pruning(resnet)
    # The scan stops at 0.95: the deepest candidates remove what it removed there, round(0.95 · width) channels,
    # one short of the whole group.
    least = pruning.footprint({name: min(g.width - 1, round(0.95 * g.width)) / g.width
                               for name, g in pruning.groups.groups.items()}).macs
    with pytest.raises(UsageError, match=r"target MACs 1000 is below what leaving every unit its fewest elements "
                                         rf"gives \({least}"):
        BudgetPicker(target_macs=1000, footprint=pruning.footprint).pick(_curves(pruning.groups))


def test_a_budget_on_coupled_units_takes_no_weight_sparsity_and_latency_needs_a_table(mlp):
    groups = find_groups(mlp, SHAPE)
    pruning = ChannelPruning(groups, group_scores(groups, "l2"), 1)
    curves = _curves(groups)
    with pytest.raises(UsageError, match="--target-sparsity counts single weights"):
        BudgetPicker(target_sparsity=0.5, footprint=pruning.footprint).pick(curves)
    with pytest.raises(UsageError, match="needs units whose removal saves time"):
        BudgetPicker(target_latency_ms=1.0, footprint=pruning.footprint).pick(curves)


def test_weight_curves_take_a_mac_fraction_and_refuse_latency(mlp):
    weight = _curves(find_groups(mlp, SHAPE), granularity="weight")
    pick = BudgetPicker(target_macs=0.5).pick(weight)
    dense = sum(c.macs for c in weight.curves.values())
    assert pick.details["limit"] == 0.5 * dense
    assert pick.details["remaining_macs"] <= 0.5 * dense + 1e-6
    with pytest.raises(UsageError, match="needs units whose removal saves time"):
        BudgetPicker(target_latency_ms=1.0).pick(weight)


# --- choose: verification with the same rounding ------------------------------------------------


PICKER_OPTIONS = {
    "budget": {"target_macs": 0.5},
    **{name: {"max_drop": 0.01} for name in ("threshold", "sconce", "knee", "ensemble")},
}


@pytest.mark.parametrize("name", list(PICKER_OPTIONS))
def test_every_picker_applies_round_to_and_reports_the_exact_footprint(mlp, name):
    curves = _curves(find_groups(mlp, SHAPE))
    picker = make_allocator(name, **PICKER_OPTIONS[name])
    # A bound of 100 points: nothing is backed off, so that the picks themselves are checked.
    choice = choose(curves, picker, mlp, _data(), max_drop=1.0, device="cpu", round_to=4)
    model, params, macs = _physical(_pruning(mlp, round_to=4), choice.verified.allocation)
    size = choice.to_dict()["footprint"]
    assert (size["params"], size["macs"], size["round_to"]) == (params, macs, 4)
    assert size["macs_fraction"] == macs / size["dense_macs"]
    assert choice.global_sparsity == pytest.approx(1 - params / size["dense_params"])
    assert size["kept_channels"] == {"fc1": model.fc1.out_features, "fc2": model.fc2.out_features}
    assert all(n % 4 == 0 for n in size["kept_channels"].values()) and size["kept_channels"]["fc1"] < 48
    assert choice.verified.allocation == choice.pick.allocation
    if name == "budget":
        assert size["macs_fraction"] <= 0.5


def test_a_round_to_above_a_group_width_is_a_usage_error(resnet):
    with pytest.raises(UsageError, match=r"--round-to 32 exceeds the width of group 'conv1' \(16 channels\)"):
        choose(_curves(find_groups(resnet, SHAPE)), BudgetPicker(target_macs=0.5), resnet, _data(), device="cpu",
               round_to=32)


# --- latency ------------------------------------------------------------------------------------


def test_latency_table_and_budget_as_measured():
    pruning = _pruning(_model("mlp", hidden=(1024, 1024)), round_to=128)
    table = LatencyTable(pruning, device="cpu", batch_size=16, warmup=2, repeats=7)
    for name in pruning.groups.groups:
        assert table.kept[name] == [1024, 768, 512, 256, 128]
        assert table.saved_ms(name)[-1] >= 0  # keeping an eighth of 1024 channels saves time
        savings = table.savings(name, np.arange(0, 1024, 128))
        assert savings[0] == 0 and np.all(np.diff(savings) >= 0)

    target = 0.8 * table.dense.median_ms
    pick = BudgetPicker(target_latency_ms=target, round_to=128, latency=table).pick(_curves(pruning.groups))
    measured = pick.details["measured_latency"]
    assert measured["median_ms"] <= target == pick.details["limit"]
    assert measured["p10_ms"] <= measured["median_ms"] <= measured["p90_ms"]
    assert all(n % 128 == 0 for n in pick.details["kept"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_latency_target_on_an_absent_device_is_a_usage_error(mlp):
    curves = _curves(find_groups(mlp, SHAPE))
    with pytest.raises(UsageError, match="no CUDA GPU is present") as error:
        choose(curves, BudgetPicker(target_latency_ms=1.0), mlp, _data(), device="cuda")
    assert "\n" not in str(error.value)


# --- command line: pick writes the rounding, prune applies it -----------------------------------


@pytest.fixture(scope="module")
def channel_scan(tmp_path_factory):
    """A random-weight small CNN on digits and hand-made channel curves saved as its scan."""
    out = tmp_path_factory.mktemp("budget")
    dataset = load_dataset("digits")
    spec = model_spec("cnn", dataset.input_shape, dataset.num_classes)
    torch.manual_seed(0)
    model = build_from_spec(spec).eval()
    checkpoint = save_checkpoint(out / "model.pt", model, spec, dataset.spec)
    curves = _curves(find_groups(model, dataset.input_shape))
    save_scan(out / "scan", curves, model=model, checkpoint=str(checkpoint), model_spec=spec,
              dataset_spec=dataset.spec, settings={"granularity": "channel", "criterion": "l2"})
    return checkpoint, out / "scan"


def test_pick_writes_round_to_and_footprint_that_prune_reproduces(cli, channel_scan, tmp_path):
    checkpoint, scan = channel_scan
    code, out, err = cli("pick", "--scan", scan, "--picker", "budget", "--target-macs", "0.5", "--round-to", "8",
                         "--device", "cpu")
    assert code == 0, err
    pick = json.loads((scan / "pick.json").read_text())
    assert pick["settings"]["round_to"] == 8 and "of dense), round to 8" in out
    assert pick["footprint"]["macs"] <= 0.5 * pick["footprint"]["dense_macs"]
    assert all(n % 8 == 0 for n in pick["footprint"]["kept_channels"].values())

    code, _, err = cli("prune", "--checkpoint", checkpoint, "--allocation", scan / "pick.json", "--granularity",
                       "channel", "--finetune-epochs", "0", "--out", tmp_path, "--device", "cpu")
    assert code == 0, err
    pruned = json.loads((tmp_path / "result.json").read_text())["footprint"]["pruned"]
    assert pruned == {"params": pick["footprint"]["params"], "macs": pick["footprint"]["macs"]}


def test_pick_latency_on_an_absent_device_is_one_line(cli, channel_scan):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    _, scan = channel_scan
    code, _, err = cli("pick", "--scan", scan, "--picker", "budget", "--target-latency-ms", "1", "--device", "cuda")
    assert code != 0 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
