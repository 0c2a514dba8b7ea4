"""Saving and loading checkpoints."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from prunescope.checkpoint import Checkpoint, load_checkpoint, load_extra_state, plain_state_dict, save_checkpoint
from prunescope.errors import PrunescopeError, UsageError
from prunescope.models import build_from_spec, model_spec

DATASET_SPEC = {"name": "digits", "seed": 0, "val_fraction": 0.1}
SHAPE = (1, 8, 8)


def make(name: str = "resnet20", **kwargs) -> tuple[nn.Module, dict]:
    spec = model_spec(name, SHAPE, 10, **kwargs)
    torch.manual_seed(0)
    model = build_from_spec(spec)
    model.train()
    with torch.no_grad():  # move BN running stats off their defaults so the round trip checks buffers too
        model(torch.randn(16, *SHAPE))
    return model, spec


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(("name", "kwargs"), [("resnet20", {}), ("lstm", {"hidden": 8}), ("mlp", {"hidden": (5, 4)})])
def test_round_trip_is_bit_identical(tmp_path: Path, name: str, kwargs: dict) -> None:
    model, spec = make(name, **kwargs)
    meta = {"history": [{"epoch": 1, "val_acc": 0.5}], "shape": (1, 2), "version": "0.1.0"}
    written = save_checkpoint(tmp_path / "deep" / "dir" / "model.pt", model, spec, DATASET_SPEC, meta)
    assert written == tmp_path / "deep" / "dir" / "model.pt"

    ckpt = load_checkpoint(written)
    assert isinstance(ckpt, Checkpoint)
    assert_same_state(ckpt.model.state_dict(), model.state_dict())
    assert not ckpt.model.training
    assert ckpt.model_spec == spec and ckpt.dataset_spec == DATASET_SPEC
    assert ckpt.meta == {**meta, "shape": [1, 2]}  # tuples are stored as lists
    model.eval()
    x = torch.randn(4, *SHAPE)
    assert torch.equal(ckpt.model(x), model(x))


def test_user_factory_round_trip(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ckpt_factory.py").write_text(
        "from torch import nn\n"
        "def make(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model, spec = make("ckpt_factory:make")
    save_checkpoint(tmp_path / "f.pt", model, spec, DATASET_SPEC)
    loaded = load_checkpoint(tmp_path / "f.pt", trust_factory=["ckpt_factory:make"])  # the caller's own factory
    assert_same_state(loaded.model.state_dict(), model.state_dict())


def test_saving_and_loading_leave_the_global_rng_alone(tmp_path: Path) -> None:
    model, spec = make("mlp")
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC)
    load_checkpoint(tmp_path / "m.pt")
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch) -> None:
    model, spec = make("mlp")
    path = save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC, {"epoch": 1})
    save_checkpoint(path, model, spec, DATASET_SPEC, {"epoch": 2})  # overwrite
    assert os.listdir(tmp_path) == ["m.pt"]

    def crash(obj, f) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, spec, DATASET_SPEC, {"epoch": 3})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.pt"]
    assert load_checkpoint(path).meta == {"epoch": 2}  # the old checkpoint survived intact


def test_pruned_model_loads_into_plain_architecture(tmp_path: Path) -> None:
    model, spec = make("lenet5")
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    prune.l1_unstructured(model.fc1, "weight", amount=0.9)
    prune.l1_unstructured(model.fc1, "bias", amount=0.5)
    expected = {"conv1.weight": model.conv1.weight.detach().clone(), "fc1.weight": model.fc1.weight.detach().clone()}
    keys_before = set(model.state_dict())

    save_checkpoint(tmp_path / "p.pt", model, spec, DATASET_SPEC)
    assert set(model.state_dict()) == keys_before  # the live model keeps its masks
    loaded = load_checkpoint(tmp_path / "p.pt").model
    assert not prune.is_pruned(loaded)
    assert set(loaded.state_dict()) == set(build_from_spec(spec).state_dict())
    for key, weight in expected.items():
        assert torch.equal(loaded.get_parameter(key), weight)
    assert (loaded.fc1.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-3)
    assert (loaded.fc1.bias == 0).sum().item() == 250
    x = torch.randn(2, *SHAPE)
    model.eval()
    assert torch.equal(loaded(x), model(x))


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def test_parametrized_model_is_baked(tmp_path: Path) -> None:
    model, spec = make("mlp", hidden=[4])
    mask = (torch.rand_like(model.fc1.weight) > 0.5).float()
    parametrize.register_parametrization(model.fc1, "weight", _Mask(mask))
    state = plain_state_dict(model)
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    save_checkpoint(tmp_path / "p.pt", model, spec, DATASET_SPEC)
    assert torch.equal(load_checkpoint(tmp_path / "p.pt").model.fc1.weight, model.fc1.weight)


def test_extra_state_round_trip(tmp_path: Path) -> None:
    model, spec = make("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, *SHAPE)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    extra = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 3}
    save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC, extra_state=extra)

    loaded = load_extra_state(tmp_path / "m.pt")
    assert loaded["epoch"] == 3 and loaded["scheduler"] == scheduler.state_dict()
    resumed = torch.optim.Adam(load_checkpoint(tmp_path / "m.pt").model.parameters(), lr=1e-3)
    resumed.load_state_dict(loaded["optimizer"])
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(resumed.state_dict()["state"][0][key], value)
    assert resumed.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert load_extra_state(save_checkpoint(tmp_path / "n.pt", model, spec, DATASET_SPEC)) == {}


def test_unstorable_meta_is_refused_at_save(tmp_path: Path) -> None:
    model, spec = make("mlp")
    with pytest.raises(TypeError, match=re.escape("meta['history'][0] is a object")):
        save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC, {"history": [object()]})
    assert not (tmp_path / "m.pt").exists()


def test_model_not_matching_its_spec_is_refused_at_save(tmp_path: Path) -> None:
    model, _ = make("mlp", hidden=[4])
    with pytest.raises(
        PrunescopeError, match=re.escape("'fc1.weight' has shape (4, 64) in the checkpoint but (128, 64)")
    ):
        save_checkpoint(tmp_path / "m.pt", model, model_spec("mlp", SHAPE, 10), DATASET_SPEC)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- refusals


def load_error(path: Path) -> str:
    with pytest.raises(UsageError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in load_error(tmp_path / "nope.pt")
    assert "does not exist" in load_error(tmp_path)  # a directory is no checkpoint either


class _Exploit:
    """Pickles as a call to os.mkdir: running it on load would create the marker directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "exploited"
    model, spec = make("mlp")
    path = save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC)
    payload = torch.load(path, weights_only=True)
    payload["meta"] = {"note": _Exploit(marker)}
    torch.save(payload, path)

    assert "unsafe to load" in load_error(path)
    with pytest.raises(UsageError, match="unsafe to load"):
        load_extra_state(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_corrupt_file(tmp_path: Path, damage: str) -> None:
    model, spec = make("mlp")
    path = save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "text": b"epoch,acc\n1,0.5\n", "empty": b""}[damage])
    assert "not a readable torch file" in load_error(path)


def test_bare_state_dict(tmp_path: Path) -> None:
    model, _ = make("mlp")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert load_error(tmp_path / "bare.pt") == (
        f"{tmp_path / 'bare.pt'} is a bare state dict, not a prunescope checkpoint; "
        "save with prunescope train or pass --model/--dataset"
    )


def test_other_torch_file(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "not a prunescope checkpoint (it holds a list)" in load_error(tmp_path / "list.pt")


def rewrite(path: Path, **changes) -> None:
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    model, spec = make("lenet5")
    return save_checkpoint(tmp_path / "m.pt", model, spec, DATASET_SPEC), spec


def test_state_dict_with_wrong_shape(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    rewrite(path, model_spec=model_spec("lenet5", SHAPE, 3))
    assert "'fc2.weight' has shape (10, 500) in the checkpoint but (3, 500) in the model" in load_error(path)


def test_state_dict_with_missing_or_extra_keys(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    state = torch.load(path, weights_only=True)["state_dict"]
    rewrite(path, state_dict={k: v for k, v in state.items() if k != "conv2.bias"})
    assert "'conv2.bias' (shape (50,)) is missing from the checkpoint" in load_error(path)
    rewrite(path, state_dict={**state, "fc3.weight": torch.zeros(2, 2)})
    assert "the checkpoint has 'fc3.weight' (shape (2, 2)), which the model lacks" in load_error(path)


def test_unknown_model_in_spec(saved: tuple[Path, dict]) -> None:
    path, spec = saved
    rewrite(path, model_spec={**spec, "name": "lenet7"})
    assert "unknown model 'lenet7'" in load_error(path)


def test_newer_format_version(saved: tuple[Path, dict]) -> None:
    path, _ = saved
    rewrite(path, version=2)
    assert "format version 2" in load_error(path)
