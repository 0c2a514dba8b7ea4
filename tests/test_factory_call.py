"""How a user's model factory is called: arguments mapped by name, one-line errors naming it."""

import pytest
import torch
from torch import nn

from prunescope.errors import PrunescopeError, UsageError
from prunescope.models import build_from_spec, build_model, factory_arguments, model_spec


def test_other_keyword_names_are_mapped():
    model = build_model("own_models:other_names", (3, 8, 8), 4, width=5)
    assert model[0].in_channels == 3 and model[0].out_channels == 5 and model[-1].out_features == 4
    spec = model_spec("own_models:other_names", (3, 8, 8), 4, width=5)
    assert build_from_spec(spec)(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda in_features, num_outputs: None, {"in_features": 30, "num_outputs": 2}),
        (lambda input_shape, n_classes, depth=2: None, {"input_shape": (5, 6), "n_classes": 2}),
        (lambda in_channels, classes: None, {"in_channels": 5, "classes": 2}),
        (lambda: None, {}),
        (lambda **kw: None, {"input_shape": (5, 6), "num_classes": 2}),
    ],
)
def test_arguments_follow_the_signature(factory, expected):
    assert factory_arguments("m:f", factory, (5, 6), 2, {}) == expected


def test_user_options_win_over_derived_values():
    call = factory_arguments("m:f", lambda in_channels, num_classes: None, (3, 4, 4), 2, {"in_channels": 1})
    assert call == {"in_channels": 1, "num_classes": 2}


def test_required_argument_nobody_supplies_is_one_line():
    with pytest.raises(UsageError, match=r"needs argument 'vocabulary'.*--model-arg vocabulary=VALUE") as error:
        factory_arguments("m:f", lambda vocabulary, num_classes: None, (3,), 2, {})
    assert "\n" not in str(error.value)


def test_factory_that_raises_is_one_line_naming_it():
    with pytest.raises(PrunescopeError, match=r"model factory 'own_models:raises' failed .*out of cheese") as error:
        build_model("own_models:raises", (1, 8, 8), 3)
    assert "\n" not in str(error.value) and not isinstance(error.value, UsageError)


def test_factory_returning_no_module_is_one_line_naming_it():
    with pytest.raises(UsageError, match=r"model factory 'own_models:not_a_module' returned a str, not a torch"):
        build_model("own_models:not_a_module", (1, 8, 8), 3)


@pytest.mark.parametrize("name", ["mlp", "lenet300"])
def test_zoo_mlp_takes_flat_inputs(name):
    model = build_model(name, (30,), 3)
    assert isinstance(model, nn.Module) and model(torch.zeros(4, 30)).shape == (4, 3)


def test_zoo_cnn_refuses_flat_inputs_and_names_what_works():
    with pytest.raises(UsageError, match=r"needs an image input shape.*use mlp or lenet300"):
        build_model("cnn", (30,), 3)
