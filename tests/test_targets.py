import pytest
from torch import nn
from torch.nn.utils import prune

from prunescope.errors import UsageError
from prunescope.targets import chosen_targets, find_targets, parameter


def test_finds_weights_of_linear_and_conv_but_not_biases_or_norms(tiny_model):
    targets = find_targets(tiny_model)
    assert [t.name for t in targets] == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert [t.kind for t in targets] == ["conv", "linear", "linear"]
    assert targets[0].shape == (4, 1, 3, 3) and targets[0].numel == 36


def test_finds_recurrent_and_attention_weights_once(sequence_model):
    names = [t.name for t in find_targets(sequence_model)]
    assert names == [
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "head.weight",
    ]


def test_bidirectional_multilayer_gru():
    model = nn.Sequential(nn.GRU(3, 5, num_layers=2, bidirectional=True))
    names = {t.name for t in find_targets(model)}
    assert names == {f"0.weight_{kind}_l{layer}{suffix}" for kind in ("ih", "hh") for layer in (0, 1)
                     for suffix in ("", "_reverse")}


def test_include_and_exclude_globs(tiny_model):
    assert [t.name for t in find_targets(tiny_model, include=["fc*"])] == ["fc1.weight", "fc2.weight"]
    assert [t.name for t in find_targets(tiny_model, exclude=["fc2"])] == ["conv.weight", "fc1.weight"]


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_glob_matching_nothing_is_a_one_line_error(tiny_model, option):
    with pytest.raises(UsageError, match="matches no prunable layer") as error:
        find_targets(tiny_model, **{option: ["conv9*"]})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("include", [[], ["fc*"]])
def test_patterns_that_leave_no_layer_are_a_one_line_error(tiny_model, include):
    """A scan or pick of no layer would run and report on nothing (issue 25)."""
    with pytest.raises(UsageError, match=r"--exclude '\*' leaves no layer to prune") as error:
        find_targets(tiny_model, include=include, exclude=["*"])
    assert "\n" not in str(error.value) and "fc1.weight" in str(error.value)
    with pytest.raises(UsageError, match="leaves no layer"):
        find_targets(tiny_model, exclude=["conv*", "fc*"])


def test_a_language_model_with_only_default_dense_layers_is_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(UsageError, match=r"no layer to prune.*--include"):
        chosen_targets(model, vocabulary=10)
    assert [t.name for t in chosen_targets(model, 10, include=["1*"])[0]] == ["1.weight"]


def test_model_without_prunable_layers():
    with pytest.raises(UsageError, match="no prunable layers"):
        find_targets(nn.Sequential(nn.ReLU()))


def test_pruned_module_resolves_to_the_trainable_original(tiny_model):
    prune.l1_unstructured(tiny_model.fc1, "weight", amount=0.5)
    target = next(t for t in find_targets(tiny_model) if t.name == "fc1.weight")
    assert parameter(tiny_model, target) is tiny_model.fc1.weight_orig
