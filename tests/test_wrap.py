"""prunescope.wrap: a module trained in Python becomes a checkpoint every command takes."""

from __future__ import annotations

import json

import pytest
import torch
from own_models import Attention, Tabular, _images, map_style
from torch import nn
from torch.utils.data import TensorDataset

import prunescope
from prunescope.checkpoint import load_checkpoint
from prunescope.data import load_from_spec
from prunescope.errors import UsageError


def _trained_tabular() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = Tabular((30,), 3)
    (x, y), test = _images(200, 0, shape=(30,)), _images(60, 1, shape=(30,))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model, ((x[:150], y[:150]), (x[150:], y[150:]), test)


def test_wrapped_model_and_data_load_back_exactly(tmp_path):
    model, splits = _trained_tabular()
    path = prunescope.wrap(model, splits, tmp_path / "wrapped")
    saved = load_checkpoint(path, trust_factory=True)
    assert saved.model_spec["name"] == "own_models:Tabular"
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[name], tensor), name
    data = load_from_spec(saved.dataset_spec)
    assert torch.equal(data.val.x, splits[1][0]) and torch.equal(data.test.y, splits[2][1])  # as given, not normalised
    with torch.no_grad():
        assert torch.equal(saved.model(data.val.x), model.eval()(splits[1][0]))


def test_the_cli_scans_picks_and_prunes_a_wrapped_model(cli, tmp_path):
    model, splits = _trained_tabular()
    path = prunescope.wrap(model, splits, tmp_path / "wrapped")
    cpu = ("--device", "cpu", "--trust-factory")
    code, _, err = cli("scan", "--checkpoint", path, "--out", tmp_path / "scan", *cpu)
    assert code == 0, err
    code, _, err = cli("pick", "--scan", tmp_path / "scan", "--picker", "budget", "--target-sparsity", "0.5", *cpu)
    assert code == 0, err
    code, _, err = cli("prune", "--checkpoint", path, "--allocation", tmp_path / "scan" / "pick.json",
                       "--finetune-epochs", "0", "--out", tmp_path / "pruned", *cpu)
    assert code == 0, err
    assert json.loads((tmp_path / "pruned" / "result.json").read_text())["dataset"]["name"] == "saved"


@pytest.mark.parametrize("kind", ["tensor-datasets", "map-style"])
def test_datasets_as_users_hold_them(tmp_path, kind):
    torch.manual_seed(0)
    model = Attention((1, 8, 8), 3)
    data = ((TensorDataset(*_images(90, 0)), TensorDataset(*_images(30, 1))) if kind == "tensor-datasets"
            else map_style(90, 30))
    saved = load_checkpoint(prunescope.wrap(model, data, tmp_path), trust_factory=True)
    assert saved.dataset_spec["name"] == "saved" and saved.model_spec["input_shape"] == [1, 8, 8]


def test_a_class_defined_where_the_cli_cannot_import_it_is_refused(tmp_path):
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(30, 3)

    with pytest.raises(UsageError, match="move it into a module, or pass factory=") as error:
        prunescope.wrap(Local(), _trained_tabular()[1], tmp_path)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model.pt").exists()


def test_weights_the_factory_cannot_take_are_refused_in_one_line(tmp_path):
    _, splits = _trained_tabular()
    with pytest.raises(UsageError, match="does not build a model that takes these weights") as error:
        prunescope.wrap(Attention((1, 8, 8), 3, dim=8), splits, tmp_path, factory="own_models:attention")
    assert "\n" not in str(error.value)


def test_model_arg_on_a_command_that_reads_a_checkpoint(cli, tmp_path):
    torch.manual_seed(0)
    model = Attention((1, 8, 8), 3, dim=8)
    path = prunescope.wrap(model, (_images(90, 0), _images(30, 1)), tmp_path / "w",
                           factory="own_models:attention", model_args={"dim": 8})
    code, _, err = cli("measure", "--checkpoint", path, "--model-arg", "dim=12", "--repeats", "1",
                       "--batch-sizes", "1", "--device", "cpu", "--trust-factory")
    assert code == 2 and "does not fit" in err and "Traceback" not in err
    code, _, err = cli("scan", "--checkpoint", path, "--model-arg", "dim=8", "--out", tmp_path / "scan",
                       "--device", "cpu", "--trust-factory")
    assert code == 0, err
