"""The model zoo, its registry and user factories."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
from torch import nn

from prunescope.errors import UsageError
from prunescope.models import ModelInfo, available_models, build_from_spec, build_model, model_spec, spec_difference

SEQUENCE_MODELS = ["gpt"]  # token ids (N, T) → next-token logits (N, T, vocabulary)
ZOO = [info.name for info in available_models() if info.name not in SEQUENCE_MODELS]
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_lists_every_model_once() -> None:
    assert [info.name for info in available_models()] == [*ZOO, *SEQUENCE_MODELS]
    assert ZOO == ["mlp", "lenet300", "lenet5", "cnn", "resnet20", "resnet56", "vgg", "lstm"]
    assert all(isinstance(info, ModelInfo) and "\n" not in info.description for info in available_models())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_gives_logits(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7)
    model.train()  # BatchNorm in training mode needs the batch > 1 and still must work
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    model.eval()
    assert model(torch.randn(1, *shape)).shape == (1, 7)


@pytest.mark.parametrize("info", [i for i in available_models() if i.name in ZOO], ids=lambda i: i.name)
def test_description_param_count_is_true(info: ModelInfo) -> None:
    count = re.search(r"([\d,]+) params on 1x28x28", info.description)
    assert count is not None
    assert n_params(build_model(info.name, (1, 28, 28), 10)) == int(count.group(1).replace(",", ""))


def test_gpt_predicts_every_next_token_causally() -> None:
    """Logits (N, T, vocabulary); the logits at position t do not depend on tokens after t; the listed size is true."""
    count = re.search(r"([\d,]+) params for 256 tokens, 128 positions", dict(
        (i.name, i.description) for i in available_models())["gpt"])
    assert count is not None and n_params(build_model("gpt", (128,), 256)) == int(count.group(1).replace(",", ""))
    torch.manual_seed(0)
    model = build_model("gpt", (16,), 50, width=32, layers=2, heads=4).eval()
    tokens = torch.randint(0, 50, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    with torch.no_grad():
        logits, after = model(tokens), model(changed)
    assert logits.shape == (2, 16, 50)
    # The same computation on the same prefix: positions before 10 see no change (causal mask).
    torch.testing.assert_close(logits[:, :10], after[:, :10], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits[:, 10:], after[:, 10:])
    torch.manual_seed(3)
    first = build_model("gpt", (16,), 50).state_dict()
    torch.manual_seed(3)
    assert all(torch.equal(first[k], v) for k, v in build_model("gpt", (16,), 50).state_dict().items())


def test_gpt_refuses_images_and_long_sequences() -> None:
    with pytest.raises(UsageError, match="input shape is"):
        build_model("gpt", (1, 8, 8), 10)
    with pytest.raises(UsageError, match="at most 8 tokens"):
        build_model("gpt", (8,), 10)(torch.zeros(1, 9, dtype=torch.long))


def test_paper_param_counts() -> None:
    assert n_params(build_model("lenet300", (1, 28, 28), 10)) == 266_610
    assert n_params(build_model("lenet5", (1, 28, 28), 10)) == 431_080
    assert 260_000 <= n_params(build_model("resnet20", (3, 32, 32), 10)) <= 280_000
    assert n_params(build_model("cnn", (1, 28, 28), 10)) < 150_000


def test_parameter_paths_are_readable() -> None:
    assert {"fc1.weight", "fc2.weight", "fc3.weight"} <= dict(
        build_model("lenet300", (1, 28, 28), 10).named_parameters()
    ).keys()
    lenet5 = dict(build_model("lenet5", (1, 28, 28), 10).named_parameters())
    assert list(lenet5) == [f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")]
    resnet = dict(build_model("resnet20", (3, 32, 32), 10).named_parameters())
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight", "fc.weight"} <= resnet.keys()
    assert "layer1.0.shortcut.0.weight" not in resnet  # identity where the shape stays


def test_resnet_has_projection_shortcuts_only_where_shape_changes() -> None:
    model = build_model("resnet56", (3, 32, 32), 10)
    projections = [
        name for name, m in model.named_modules() if name.endswith("shortcut") and not isinstance(m, nn.Identity)
    ]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 9


def test_lenet5_pads_only_small_inputs() -> None:
    assert build_model("lenet5", (1, 28, 28), 10).conv1.padding == (0, 0)
    assert build_model("lenet5", (1, 8, 8), 10).conv1.padding == (2, 2)


@pytest.mark.parametrize("name", ZOO)
def test_same_seed_same_weights(name: str) -> None:
    torch.manual_seed(3)
    first = build_model(name, (1, 8, 8), 10).state_dict()
    torch.manual_seed(3)
    second = build_model(name, (1, 8, 8), 10).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_options() -> None:
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[32])
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [32, 10]
    vgg = build_model("vgg", (3, 32, 32), 10, cfg=[8, "M", 16])
    assert vgg.classifier.in_features == 16
    lstm = build_model("lstm", (1, 28, 28), 10, hidden=16, num_layers=2)
    assert (lstm.lstm.hidden_size, lstm.lstm.num_layers, lstm.lstm.input_size) == (16, 2, 28)


def test_spec_round_trip_is_json_and_rebuilds() -> None:
    spec = model_spec("mlp", (1, 8, 8), 10, hidden=(16, 8))
    assert spec == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {"hidden": [16, 8]}}
    spec = json.loads(json.dumps(spec))
    torch.manual_seed(0)
    rebuilt = build_from_spec(spec)
    torch.manual_seed(0)
    direct = build_model("mlp", (1, 8, 8), 10, hidden=(16, 8))
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), direct.state_dict().values(), strict=True)
    )


FACTORY = """
from torch import nn

def tiny(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], width),
                         nn.ReLU(), nn.Linear(width, num_classes))

def not_a_model(input_shape, num_classes):
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "userzoo_mod.py").write_text(textwrap.dedent(FACTORY))
    (tmp_path / "userzoo_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userzoo_mod"


def test_user_factory(factory_module: str) -> None:
    name = f"{factory_module}:tiny"
    model = build_model(name, (1, 8, 8), 5, width=6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    spec = model_spec(name, (1, 8, 8), 5, width=6)
    assert build_from_spec(spec)[1].out_features == 6


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("userzoo_missing:tiny", "ModuleNotFoundError"),
        ("userzoo_broken:tiny", "boom at import"),
        ("userzoo_mod:nope", "AttributeError"),
        ("userzoo_mod:NOT_CALLABLE", "not a function"),
        ("userzoo_mod:", "package.module:function"),
    ],
)
def test_bad_factory(factory_module: str, name: str, reason: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"cannot import model factory {name!r}")) as e:
        build_model(name, (1, 8, 8), 5)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_zoo_name_lists_the_zoo() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet18'") as e:
        build_model("resnet18", (3, 32, 32), 10)
    assert all(name in str(e.value) for name in ZOO)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_model("mlp", (1, 8, 8), 10, width=3),
            "model 'mlp' has no option 'width': its options are hidden",
        ),
        (lambda: build_model("lenet300", (1, 8, 8), 10, hidden=[3]), "'lenet300' has no option 'hidden': it takes no"),
        (lambda: model_spec("resnet20", (3, 32, 32), 10, depth=3), "'resnet20' has no option 'depth'"),
        (lambda: build_model("userzoo_mod:tiny", (1, 8, 8), 10, depth=3), "'userzoo_mod:tiny' has no option 'depth'"),
        (lambda: build_model("mlp", (1, 8, 8), 10, hidden=[0]), "hidden must be a positive integer"),
        (lambda: build_model("vgg", (3, 32, 32), 10, cfg=["M"]), "cfg must be a list"),
        (lambda: build_model("cnn", (784,), 10), "needs an image input shape"),
        (lambda: build_model("cnn", (1, 8, 8), 0), "number of classes"),
        (lambda: build_model("lenet5", (1, 2, 2), 10), "too small"),
        (lambda: build_from_spec({"name": "mlp"}), "missing 'input_shape'"),
        (lambda: model_spec("mlp", (1, 8, 8), 10, hidden=object()), "hidden must be plain data"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(factory_module: str, call, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as e:
        call()
    assert "\n" not in str(e.value)


def test_a_pruned_spec_is_rebuilt_by_the_channel_groups_not_the_zoo():
    spec = model_spec("mlp", (1, 4, 4), 3, hidden=[16])
    pruned = {**spec, "removed_channels": {"0": [0, 1, 2]}}
    with pytest.raises(UsageError, match=r"structured\.groups\.rebuild"):
        build_from_spec(pruned)


def test_spec_difference_names_what_differs() -> None:
    mlp = model_spec("mlp", (1, 8, 8), 10)
    narrow = model_spec("mlp", (1, 8, 8), 10, hidden=[32])
    assert spec_difference(mlp, mlp) is None
    assert spec_difference(narrow, mlp) == "hidden=[32], not hidden at its default"
    assert spec_difference(narrow, model_spec("mlp", (1, 8, 8), 10, hidden=[64])) == "hidden=[32], not hidden=[64]"
    assert spec_difference(model_spec("cnn", (1, 8, 8), 10), mlp) == "'cnn', not 'mlp'"
    assert spec_difference(model_spec("mlp", (1, 8, 8), 3), mlp) == "num_classes 3, not 10"
