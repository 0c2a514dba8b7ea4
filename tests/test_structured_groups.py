"""Channel groups: masking computes what physical removal does, footprints are exact, and what
cannot be removed is reported (``prunescope.structured.groups``)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_model
from prunescope.structured.find import find_groups, pruned_copy

SHAPE = (1, 16, 16)


# ----------------------------------------------------------------------------- models


class ResidualNet(nn.Module):
    """stem conv-BN-ReLU → (conv-BN-ReLU-conv-BN) + identity → ReLU → conv → global mean → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(self.conv3(torch.relu(x + y)))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """stem → two conv-BN branches of different widths (6 and 5) concatenated on channels → conv → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(4)
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.a_bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(4, 5, 1)
        self.b_bn = nn.BatchNorm2d(5)
        self.merge = nn.Conv2d(11, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.cat([torch.relu(self.a_bn(self.a(x))), torch.relu(self.b_bn(self.b(x)))], dim=1)
        return self.head(torch.relu(self.merge(x)).mean((2, 3)))


# The layers whose outputs carry each group's channels, for the independent reference below.
PRODUCERS = {
    "residual": {"conv2": ["bn0", "bn2"], "conv1": ["bn1"], "conv3": ["conv3"]},  # conv2: the residual stream
    "concat": {"stem": ["stem_bn"], "a": ["a_bn"], "b": ["b_bn"], "merge": ["merge"]},
}
CUSTOM = {"residual": ResidualNet, "concat": ConcatNet}
ZOO = ["mlp", "lenet300", "lenet5", "cnn", "resnet20", "resnet56", "vgg", "lstm"]


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm running stats and affine parameters far from their defaults (so slicing them matters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator) * 0.5 + 1.0)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model.eval()


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CUSTOM[name]() if name in CUSTOM else build_model(name, SHAPE, 4)
    return randomise_norms(model, seed)


def random_half(groups, seed: int = 0) -> dict[str, list[int]]:
    """About half of every group's channels, chosen at random."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: sorted(torch.randperm(group.width, generator=generator)[: group.width // 2].tolist())
        for name, group in groups.groups.items()
    }


def batch(seed: int = 1, n: int = 4, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_bit_exact(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape, name
        if tensor.is_floating_point():  # bit patterns: -0.0 vs 0.0 and NaN payloads count too
            assert torch.equal(after[name].view(torch.int32), tensor.view(torch.int32)), name
        else:
            assert torch.equal(after[name], tensor), name


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_channels(idxs: list[int]):
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, idxs] = 0
        return output

    return hook


def zeroing(model: nn.Module, producers: dict[str, list[str]], removal: dict[str, list[int]]) -> list:
    """Forward hooks that zero each removed channel where it is produced: what removal computes."""
    modules = dict(model.named_modules())
    return [
        modules[producer].register_forward_hook(zero_channels(list(idxs)))
        for group, idxs in removal.items()
        for producer in producers[group]
    ]


# ----------------------------------------------------------------------------- faithful masking


@pytest.mark.parametrize("name", ZOO + list(CUSTOM))
def test_masked_model_computes_what_the_pruned_copy_computes(name):
    model = make_model(name)
    groups = find_groups(model, SHAPE)
    removal = random_half(groups)
    assert removal and all(len(idxs) for idxs in removal.values())
    x = batch()
    with torch.no_grad():
        dense = model(x)
        with groups.masked(removal) as masked_model:
            assert masked_model is model
            masked = model(x)
        pruned_model = pruned_copy(model, SHAPE, removal)
        pruned = pruned_model(x)
    assert params(pruned_model) < params(model)  # really smaller
    assert not torch.allclose(masked, dense, atol=1e-3)  # the removal changes the function
    scale = dense.abs().max().item()
    torch.testing.assert_close(masked, pruned, rtol=1e-4, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("residual", ["conv2"]),
        ("residual", ["conv1"]),
        ("residual", None),
        ("concat", ["a"]),
        ("concat", ["b"]),
        ("concat", ["stem"]),
        ("concat", None),
    ],
)
def test_masking_and_pruning_equal_zeroing_the_removed_activations(name, part):
    """An independent reference: removing channels = zeroing them where they are produced."""
    model = make_model(name)
    groups = find_groups(model, SHAPE)
    assert set(groups.groups) == set(PRODUCERS[name])
    removal = {k: v for k, v in random_half(groups, seed=3).items() if part is None or k in part}
    x = batch()
    with torch.no_grad():
        handles = zeroing(model, PRODUCERS[name], removal)
        try:
            reference = model(x)
        finally:
            for handle in handles:
                handle.remove()
        with groups.masked(removal):
            masked = model(x)
        pruned = pruned_copy(model, SHAPE, removal)(x)
        assert not torch.allclose(reference, model(x), atol=1e-4)
    torch.testing.assert_close(masked, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("branch", "width", "offset", "removed"), [("a", 6, 0, [1, 3]), ("b", 5, 6, [0, 2, 4])])
def test_concat_maps_branch_channels_to_the_right_columns_of_the_merge(branch, width, offset, removed):
    """Channel j of branch b is column 6 + j of the merge conv (branch a, first in the cat, is 6 wide)."""
    model = make_model("concat")
    groups = find_groups(model, SHAPE)
    assert groups.groups[branch].members == (f"{branch} (out)", f"{branch}_bn (out)", "merge (in)")
    assert groups.groups[branch].width == width
    entries = groups.removed_entries({branch: removed})
    columns = entries["merge.weight"].all(3).all(2).all(0)
    assert columns.nonzero().flatten().tolist() == [offset + i for i in removed]
    assert int(entries["merge.weight"].sum()) == 8 * len(removed) * 9  # whole columns, nothing else
    pruned = pruned_copy(model, SHAPE, {branch: removed})
    kept_columns = [c for c in range(11) if not (offset <= c < offset + width and c - offset in removed)]
    kept = [i for i in range(width) if i not in removed]
    assert torch.equal(pruned.merge.weight, model.merge.weight[:, kept_columns])
    for attr in ("weight", "bias", "running_mean", "running_var"):
        bn, original = getattr(pruned, f"{branch}_bn"), getattr(model, f"{branch}_bn")
        assert torch.equal(getattr(bn, attr), getattr(original, attr)[kept]), attr
    assert torch.equal(getattr(pruned, branch).weight, getattr(model, branch).weight[kept])


# ----------------------------------------------------------------------------- restoring


@pytest.mark.parametrize("name", ["cnn", "resnet20", "lstm", "concat"])
@pytest.mark.parametrize("raises", [False, True])
def test_masking_restores_every_parameter_and_buffer_bit_exactly(name, raises):
    model = make_model(name)
    groups = find_groups(model, SHAPE)
    removal = random_half(groups)
    path, where = next(iter(groups.removed_entries(removal).items()))
    with torch.no_grad():  # a masked negative zero, whose sign a restore through arithmetic would lose
        dict(model.named_parameters())[path][tuple(where.nonzero()[0].tolist())] = -0.0
    before = snapshot(model)
    objects = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}

    class Boom(Exception):
        pass

    def masked_block():
        with groups.masked(removal):
            changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
            assert changed  # masking did zero something
            for path, where in groups.removed_entries(removal).items():
                assert (dict(model.named_parameters())[path][where] == 0).all(), path
            if raises:
                raise Boom

    if raises:
        with pytest.raises(Boom):
            masked_block()
    else:
        masked_block()
    assert_bit_exact(model, before)
    for n, p in model.named_parameters():  # restored in place: optimisers keep their references
        assert p is objects[n][0] and p.data_ptr() == objects[n][1]


def test_pruned_copy_leaves_the_model_untouched_and_pruned_groups_refuse_reuse():
    model = make_model("resnet20")
    before = snapshot(model)
    groups = find_groups(model, SHAPE)
    removal = random_half(groups)
    pruned_copy(model, SHAPE, removal)
    assert_bit_exact(model, before)
    groups.prune({"layer1.0.conv1": [0, 1]})
    assert model.layer1[0].conv1.out_channels == 14
    with pytest.raises(RuntimeError, match="find them again"):
        groups.footprint({"layer1.0.conv1": [0]})


# ----------------------------------------------------------------------------- footprints


def half(width: int, start: int = 0) -> list[int]:
    return list(range(start, width, 2))


FOOTPRINT_CASES = [
    ("mlp", {"fc1": half(128)}),
    ("mlp", {"fc1": half(128), "fc2": half(64, 1)}),  # adjacent: fc2.weight loses rows and columns
    ("lenet5", {"conv2": half(50), "fc1": half(500)}),  # through the flatten, and adjacent in fc1
    ("cnn", {"conv1.conv": half(32), "conv2.conv": half(32, 1)}),
    ("resnet20", {"conv1": [0, 3, 5], "layer1.0.conv1": half(16)}),  # overlap in layer1.0.conv2
    ("resnet20", {"layer3.0.shortcut.0": half(64), "layer3.2.conv1": half(64, 1)}),
    ("lstm", {"lstm": half(128)}),
    ("residual", {"conv2": [0, 2], "conv1": [1]}),
    ("concat", {"a": [0, 5], "b": [1, 2], "merge": [7]}),
]


@pytest.mark.parametrize(("name", "removal"), FOOTPRINT_CASES)
def test_footprint_is_exactly_what_the_pruned_model_has(name, removal):
    model = make_model(name)
    groups = find_groups(model, SHAPE)
    dense = groups.footprint()
    assert (dense.params, dense.macs) == (params(model), count_macs(model, SHAPE).dense)
    footprint = groups.footprint(removal)
    pruned = pruned_copy(model, SHAPE, removal)
    assert footprint.params == params(pruned)
    assert footprint.macs == count_macs(pruned, SHAPE).dense
    assert footprint.params < dense.params and footprint.macs < dense.macs


@pytest.mark.parametrize(("name", "removal"), [case for case in FOOTPRINT_CASES if len(case[1]) > 1])
def test_two_adjacent_groups_overlap_and_are_counted_once(name, removal):
    """Each group alone removes entries the other also removes: summing them would be wrong."""
    groups = find_groups(make_model(name), SHAPE)
    dense = groups.footprint().params
    alone = sum(dense - groups.footprint({k: v}).params for k, v in removal.items())
    together = dense - groups.footprint(removal).params
    assert together < alone


@pytest.mark.parametrize(
    ("name", "group", "expected_params", "expected_macs"),
    [
        # fc1 rows and bias, fc2 columns (input 16x16 = 256 features)
        ("mlp", "fc1", 128 * 256 + 128 + 64 * 128, 128 * 256 + 64 * 128),
        # conv1 filters (no bias), BN scale and shift, conv2 input planes; 16x16 positions each
        ("cnn", "conv1.conv", 32 * 9 + 2 * 32 + 32 * 32 * 9, (32 * 9 + 32 * 32 * 9) * 256),
        # residual stream: stem and conv2 filters, both BNs, conv1 and conv3 input planes
        (
            "residual",
            "conv2",
            6 * 9 + 12 + 4 * 6 * 9 + 6 * 4 * 9 + 12 + 5 * 6 * 9,
            (6 * 9 + 2 * 6 * 4 * 9 + 5 * 6 * 9) * 256,
        ),
        # branch b (1x1, with bias) and its BN, merge columns 6..10
        ("concat", "b", 5 * 4 + 5 + 10 + 8 * 5 * 9, (5 * 4 + 8 * 5 * 9) * 256),
        # the whole LSTM but the input columns of nothing: all gate rows, all of weight_hh, biases; fc columns
        ("lstm", "lstm", 512 * 16 + 512 * 128 + 2 * 512 + 4 * 128, (512 * 16 + 512 * 128) * 16 + 4 * 128),
    ],
)
def test_group_params_and_macs_are_its_slices(name, group, expected_params, expected_macs):
    groups = find_groups(make_model(name), SHAPE)
    assert (groups.groups[group].params, groups.groups[group].macs) == (expected_params, expected_macs)


# ----------------------------------------------------------------------------- the LSTM


def test_lstm_hidden_units_go_from_all_four_gates_and_the_recurrence():
    torch.manual_seed(0)
    h, features, removed = 8, 5, [1, 4, 6]
    model = build_model("lstm", (1, 6, features), 3, hidden=h).eval()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = find_groups(model, (1, 6, features))
    assert groups.groups["lstm"].kind == "recurrent" and groups.groups["lstm"].width == h
    assert groups.groups["lstm"].members == ("lstm (out)", "fc (in)")
    x = batch(shape=(1, 6, features))
    with torch.no_grad(), groups.masked({"lstm": removed}):
        masked = model(x)
    pruned = pruned_copy(model, (1, 6, features), {"lstm": removed})
    kept = [j for j in range(h) if j not in removed]
    k = len(removed)
    lstm = pruned.lstm
    assert lstm.hidden_size == h - k
    assert lstm.weight_ih_l0.shape == (4 * (h - k), features)
    assert lstm.weight_hh_l0.shape == (4 * (h - k), h - k)
    assert lstm.bias_ih_l0.shape == lstm.bias_hh_l0.shape == (4 * (h - k),)
    for gate in range(4):  # i, f, g, o: each keeps the rows of the kept units, in order
        rows = slice(gate * (h - k), (gate + 1) * (h - k))
        original_rows = [gate * h + j for j in kept]
        assert torch.equal(lstm.weight_ih_l0[rows], original["lstm.weight_ih_l0"][original_rows])
        assert torch.equal(lstm.weight_hh_l0[rows], original["lstm.weight_hh_l0"][original_rows][:, kept])
        assert torch.equal(lstm.bias_ih_l0[rows], original["lstm.bias_ih_l0"][original_rows])
        assert torch.equal(lstm.bias_hh_l0[rows], original["lstm.bias_hh_l0"][original_rows])
    assert torch.equal(pruned.fc.weight, original["fc.weight"][:, kept])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-5, atol=1e-6)
        # and that differs from the dense model (the removed units mattered)
        assert not torch.allclose(model(x), masked, atol=1e-4)
    assert groups.footprint({"lstm": removed}).params == params(pruned)


# ----------------------------------------------------------------------------- what is left dense


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc_mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = torch.relu(self.fc_in(x.flatten(1, 2)))
        attended, _ = self.attn(seq, seq, seq)
        return self.head(torch.relu(self.fc_mid(attended.mean(1))))


class RecurrentNet(nn.Module):
    """rows of a (1, 4, 4) image → [feed Linear] → recurrent layer → fc1 → head."""

    def __init__(self, rnn: nn.RNNBase, feed: bool = False) -> None:
        super().__init__()
        self.feed = nn.Linear(4, 4) if feed else None
        self.rnn = rnn
        self.fc1 = nn.Linear(rnn.hidden_size, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.flatten(1, 2)
        if self.feed is not None:
            seq = torch.relu(self.feed(seq))
        out, _ = self.rnn(seq)
        return self.head(torch.relu(self.fc1(out[:, -1])))


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.head(x.mean((2, 3)))


class DetachNet(nn.Module):
    """fc1's output is detached: autograd, and so the trace, never reaches fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x.flatten(1))).detach()
        return self.head(torch.relu(self.fc2(hidden)))


RECURRENT = "recurrent layer: only single-layer unidirectional LSTMs have removable hidden units"
OUTPUT = "output layer: its channels are the model's outputs"
ATTENTION = "attention: embedding dimensions are not pruned structurally"


def out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.RNNBase):
        return module.hidden_size
    return module.embed_dim


@pytest.mark.parametrize(
    ("factory", "groups_expected", "skipped_expected"),
    [
        pytest.param(
            lambda: build_model("mlp", (1, 4, 4), 3, hidden=(8, 6)), {"fc1", "fc2"}, {"fc3": OUTPUT}, id="output-layer"
        ),
        pytest.param(
            AttentionNet,
            {"fc_mid"},
            {"attn": ATTENTION, "head": OUTPUT, "fc_in": f"coupled with 'attn': {ATTENTION}"},
            id="attention",
        ),
        pytest.param(
            lambda: RecurrentNet(nn.LSTM(4, 6, num_layers=2, batch_first=True)),
            {"fc1"},
            {"rnn": RECURRENT, "head": OUTPUT},
            id="lstm-2-layers",
        ),
        pytest.param(
            lambda: RecurrentNet(nn.LSTM(4, 6, num_layers=2, batch_first=True), feed=True),
            {"feed", "fc1"},
            {"rnn": RECURRENT, "head": OUTPUT},
            id="lstm-2-layers-fed",
        ),
        pytest.param(
            lambda: RecurrentNet(nn.GRU(4, 6, batch_first=True)), {"fc1"}, {"rnn": RECURRENT, "head": OUTPUT}, id="gru"
        ),
        pytest.param(
            lambda: RecurrentNet(nn.GRU(4, 6, batch_first=True), feed=True),
            {"fc1"},
            {"rnn": RECURRENT, "head": OUTPUT, "feed": "Torch-Pruning cannot follow its channels"},
            id="gru-fed",
        ),
        pytest.param(
            lambda: RecurrentNet(nn.RNN(4, 6, batch_first=True), feed=True),
            {"fc1"},
            {"rnn": RECURRENT, "head": OUTPUT, "feed": "coupled with 'rnn'"},
            id="rnn-fed",
        ),
        pytest.param(
            GroupedConvNet,
            {"conv3"},
            {"conv2": "grouped convolution", "conv1": "coupled with 'conv2': grouped convolution", "head": OUTPUT},
            id="grouped-conv",
        ),
        pytest.param(DetachNet, {"fc2"}, {"fc1": "not reached by the trace", "head": OUTPUT}, id="detached"),
    ],
)
def test_layers_that_cannot_be_pruned_are_reported_and_left_dense(factory, groups_expected, skipped_expected):
    torch.manual_seed(0)
    model = factory().eval()
    shape = (1, 4, 4)
    groups = find_groups(model, shape)
    assert set(groups.groups) == groups_expected
    assert set(groups.skipped) >= set(skipped_expected)
    for layer, reason in skipped_expected.items():
        assert groups.skipped[layer].startswith(reason), (layer, groups.skipped[layer])
    # every layer that mixes channels is either in a group or reported: none silently dropped
    members = [member for group in groups.groups.values() for member in group.members]
    in_groups = {member.removesuffix(" (out)") for member in members if member.endswith(" (out)")}
    mixers = {name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.RNNBase))}
    assert mixers <= in_groups | set(groups.skipped)
    assert not in_groups & set(groups.skipped)
    # left dense: pruning half of every group leaves the skipped layers' outputs whole, and is faithful
    removal = random_half(groups)
    x = batch(shape=shape)
    with torch.no_grad():
        with groups.masked(removal):
            masked = model(x)
        pruned = pruned_copy(model, shape, removal)
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    modules = dict(pruned.named_modules())
    for layer in skipped_expected:
        assert out_width(modules[layer]) == out_width(dict(model.named_modules())[layer]), layer


@pytest.mark.parametrize(
    ("factory", "shape", "expected"),
    [
        pytest.param(
            lambda: build_model("lstm", (1, 4, 4), 3, hidden=6, num_layers=2),
            (1, 4, 4),
            [f"lstm: {RECURRENT}", f"fc: {OUTPUT}"],
            id="two-layer-lstm-classifier",
        ),
        pytest.param(
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), (1, 4, 4), [f"1: {OUTPUT}"], id="linear-classifier"
        ),
    ],
)
def test_a_model_without_removable_groups_is_a_usage_error_listing_why(factory, shape, expected):
    with pytest.raises(UsageError, match="no removable channel groups") as error:
        find_groups(factory().eval(), shape)
    for reason in expected:
        assert reason in str(error.value)


class TokenEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).mean(1)


class TokenNet(nn.Module):
    """Reads token ids: the float zeros the tracer feeds it are no valid input to its embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = TokenEncoder()
        self.fc1 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc1(self.encoder(tokens))))


class MaxNormLinear(nn.Linear):
    """Renormalises its rows in place on each call: fine under no_grad / inference, not under autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp(min=1.0))
        return super().forward(x)


class MaxNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.proj = MaxNormLinear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(torch.relu(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize(
    ("factory", "shape", "runs_on", "layer"),
    [
        (TokenNet, (5,), torch.zeros(2, 5, dtype=torch.long), "encoder.embed"),
        (MaxNormNet, (1, 4, 4), torch.zeros(2, 1, 4, 4), "proj"),
    ],
    ids=["embedding-fed-floats", "in-place-weight-update"],
)
def test_a_model_the_tracer_cannot_follow_is_a_one_line_usage_error_naming_the_layer(factory, shape, runs_on, layer):
    model = factory().eval()
    with torch.no_grad():
        assert model(runs_on).shape == (2, 3)  # the model itself works (on its own inputs, for inference)
    with pytest.raises(
        UsageError, match=re.escape(f"Torch-Pruning cannot trace the model in layer '{layer}'")
    ) as error:
        find_groups(model, shape)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- selection and bad removals


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ((), (), None),
        (("layer1.*",), (), ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]),
        (("layer3.*",), ("*shortcut*",), ["layer3.0.conv1", "layer3.1.conv1", "layer3.2.conv1"]),
        (("conv1", "layer2.0.*"), (), ["conv1", "layer2.0.conv1", "layer2.0.shortcut.0"]),
        ((), ("layer*",), ["conv1"]),
    ],
)
def test_include_and_exclude_globs_select_groups(include, exclude, expected):
    model = make_model("resnet20")
    everything = find_groups(model, SHAPE)
    groups = find_groups(model, SHAPE, include=include, exclude=exclude)
    assert list(groups.groups) == (expected if expected is not None else list(everything.groups))
    for name in groups.groups:  # a selected group is the same group
        assert groups.groups[name] == everything.groups[name]


@pytest.mark.parametrize(
    ("include", "exclude", "bad"), [(("nothing*",), (), "--include 'nothing*'"), ((), ("fc",), "--exclude 'fc'")]
)
def test_a_glob_matching_no_group_is_a_usage_error(include, exclude, bad):
    with pytest.raises(UsageError, match="matches no channel group") as error:
        find_groups(make_model("cnn"), SHAPE, include=include, exclude=exclude)
    assert bad in str(error.value) and "conv1.conv" in str(error.value)  # names the glob and lists groups


def test_excluding_every_group_is_a_usage_error():
    with pytest.raises(UsageError, match=r"--exclude 'fc\*' leaves no channel group to prune; groups: fc1, fc2"):
        find_groups(make_model("mlp"), SHAPE, exclude=["fc*"])


@pytest.mark.parametrize("action", ["masked", "footprint", "prune"])
@pytest.mark.parametrize(
    ("removal", "message"),
    [
        ({"fc1": list(range(128))}, "removing all 128 channels of group 'fc1'"),
        ({"fc1": [0, 0, *range(1, 128)]}, "removing all 128 channels"),  # duplicates do not hide it
        ({"fc9": [0]}, "unknown channel group 'fc9'"),
        ({"fc3": [0]}, "unknown channel group 'fc3'"),  # the output layer is no group
        ({"fc1": [128]}, "out of range"),
        ({"fc1": [-1]}, "out of range"),
    ],
)
def test_bad_removals_are_usage_errors_and_change_nothing(action, removal, message):
    model = make_model("mlp")
    groups = find_groups(model, SHAPE)
    before = snapshot(model)
    with pytest.raises(UsageError, match=message):
        if action == "masked":
            with groups.masked(removal):
                pass
        else:
            getattr(groups, action)(removal)
    assert_bit_exact(model, before)


class _ScaledHidden(nn.Module):
    """fc1 → a learned per-channel scale (a bare Parameter) → fc2; plus tokens with a 2-D positional table."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.gamma = nn.Parameter(torch.linspace(0.5, 2.0, 16))
        self.fc2 = nn.Linear(16, 3)
        self.embed = nn.Linear(5, 6)
        self.pos = nn.Parameter(torch.randn(2, 6))  # (positions, features): Torch-Pruning would guess the dimension
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x[:, :10].reshape(-1, 2, 5)) + self.pos
        return self.fc2(torch.relu(self.fc1(x[:, :10]) * self.gamma)) + self.head(tokens.mean(1))


def test_parameters_outside_layers_are_members_or_refuse_their_group(recwarn) -> None:
    torch.manual_seed(0)
    model = _ScaledHidden()
    groups = find_groups(model, (10,))
    assert "gamma (parameter)" in groups.groups["fc1"].members
    assert "embed" not in groups.groups and "'pos'" in groups.skipped["embed"]
    removal = {"fc1": [0, 3, 5]}
    pruned = pruned_copy(model, (10,), removal)
    assert pruned.gamma.shape == (13,)
    assert groups.footprint(removal).params == sum(p.numel() for p in pruned.parameters())  # gamma counted
    assert not [w for w in recwarn if "Torch-Pruning" in str(w.message) or "Unwrapped" in str(w.message)]

