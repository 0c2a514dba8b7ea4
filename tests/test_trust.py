"""A factory named in a file is never imported unless the user trusts it (issue 11, security).

Hostile checkpoints name ``subprocess:getoutput`` (would create a marker file) as their
dataset and ``logging:basicConfig`` (would truncate a victim file) as their model; every
command that loads a checkpoint must refuse them with one line and run nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunescope.checkpoint import load_checkpoint, save_checkpoint
from prunescope.curves import Curve, CurvePoint, Curves
from prunescope.data import load_dataset
from prunescope.errors import UsageError
from prunescope.models import build_from_spec, model_spec
from prunescope.report.tables import save_scan

SHAPE = (1, 8, 8)  # digits


@pytest.fixture(scope="module")
def digits_spec() -> dict:
    return load_dataset("digits").spec


def _save(path: Path, model_spec_: dict, dataset_spec: dict) -> Path:
    torch.manual_seed(0)
    model = build_from_spec(model_spec_)
    return save_checkpoint(path, model, model_spec_, dataset_spec)


def _rewrite(path: Path, **changes: dict) -> Path:
    """Replace entries of a checkpoint's payload, as an attacker editing the file would."""
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return path


@pytest.fixture
def hostile(tmp_path: Path, digits_spec: dict) -> dict:
    """Checkpoints whose specs would run code, the marker that code would create and a victim file."""
    marker, victim = tmp_path / "MARKER", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data_attack = _save(tmp_path / "data_attack.pt", model_spec("mlp", SHAPE, 10), digits_spec)
    _rewrite(data_attack, dataset_spec={"name": "subprocess:getoutput", "cmd": f"touch {marker}"})
    model_attack = _save(tmp_path / "model_attack.pt", model_spec("mlp", SHAPE, 10), digits_spec)
    bad_spec = {
        "name": "logging:basicConfig",
        "input_shape": list(SHAPE),
        "num_classes": 10,
        "kwargs": {"filename": str(victim), "filemode": "w"},
    }
    _rewrite(model_attack, model_spec=bad_spec)
    return {"data": data_attack, "model": model_attack, "marker": marker, "victim": victim, "dir": tmp_path}


def _scan_dir(tmp_path: Path, checkpoint: Path) -> Path:
    """A scan.json naming ``checkpoint``, for pick (the checkpoint is loaded before any check of the curves)."""
    point = CurvePoint(0.0, 0.9, 0.9, 0.9, 10)
    curves = Curves("accuracy", "magnitude", point, {"fc1.weight": Curve("fc1.weight", 10, 10, [point])})
    out = tmp_path / "scan"
    save_scan(
        out,
        curves,
        model=build_from_spec(model_spec("mlp", SHAPE, 10)),
        checkpoint=str(checkpoint),
        model_spec={},
        dataset_spec={},
        settings={},
    )
    return out


def _commands(ckpt: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that loads a checkpoint, pointed at ``ckpt``."""
    allocation = tmp / "alloc.json"
    allocation.write_text(json.dumps({"fc1.weight": 0.5}))
    out = tmp / "out"
    cpu = ["--device", "cpu"]
    return {
        "sweep": ["sweep", "--checkpoint", ckpt, "--out", out, *cpu],
        "scan": ["scan", "--checkpoint", ckpt, "--out", out, *cpu],
        "pick": ["pick", "--scan", _scan_dir(tmp, ckpt), *cpu],
        "pick --checkpoint": ["pick", "--scan", _scan_dir(tmp, ckpt), "--checkpoint", ckpt, *cpu],
        "compare": ["compare", "--checkpoint", ckpt, "--out", out, *cpu],
        "prune": ["prune", "--checkpoint", ckpt, "--allocation", allocation, "--out", out, *cpu],
        "prune channel": [
            "prune",
            "--checkpoint",
            ckpt,
            "--allocation",
            allocation,
            "--granularity",
            "channel",
            "--out",
            out,
            *cpu,
        ],
        "gradual": ["gradual", "--checkpoint", ckpt, "--target-sparsity", "0.5", "--out", out, *cpu],
        "baseline": ["baseline", "--checkpoint", ckpt, "--out", out, *cpu],
        "measure": ["measure", "--checkpoint", ckpt, "--repeats", "1", *cpu],
        "regimes select": ["regimes", "select", ckpt, ckpt.parent / "good_copy.pt", "--out", out],
        "measure --dense": [
            "measure",
            "--checkpoint",
            ckpt.parent / "good_copy.pt",
            "--dense",
            ckpt,
            "--repeats",
            "1",
            *cpu,
        ],
    }


COMMANDS = [
    "sweep",
    "scan",
    "pick",
    "pick --checkpoint",
    "compare",
    "prune",
    "prune channel",
    "gradual",
    "baseline",
    "measure",
    "measure --dense",
    "regimes select",
]


@pytest.mark.parametrize("attack", ["data", "model"])
@pytest.mark.parametrize("command", COMMANDS)
def test_hostile_checkpoint_is_refused_by_every_command(cli, hostile, digits_spec, command: str, attack: str) -> None:
    tmp = hostile["dir"]
    _save(tmp / "good_copy.pt", model_spec("mlp", SHAPE, 10), digits_spec)
    argv = _commands(hostile[attack], tmp)[command]
    code, out, err = cli(*argv)
    assert code == 2
    assert "does not import from a file" in err and "--trust-factory" in err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    assert not hostile["marker"].exists()
    assert hostile["victim"].read_text() == "precious\n"


def test_hostile_run_resume_is_refused(cli, hostile) -> None:
    """``run`` resumes from OUT/model.pt: a planted checkpoint there is refused, not imported."""
    out = hostile["dir"] / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(hostile["data"].read_bytes())
    code, _, err = cli("run", "--out", out, "--model", "mlp", "--data", "digits", "--epochs", "1", "--device", "cpu")
    assert code == 2 and "does not import from a file" in err
    assert not hostile["marker"].exists()


def test_factory_in_a_config_file_needs_trust(cli, tmp_path) -> None:
    marker = tmp_path / "MARKER"
    config = tmp_path / "run.toml"
    config.write_text('model = "os:system"\n')
    code, _, err = cli("run", "--config", config, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "config file" in err and "'os:system'" in err and "--trust-factory" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_factory_imports_and_says_so(cli, hostile) -> None:
    """With --trust-factory the file's factory is imported (the marker appears) and stderr said so first."""
    code, _, err = cli(
        "sweep", "--checkpoint", hostile["data"], "--out", hostile["dir"] / "out", "--device", "cpu", "--trust-factory"
    )
    assert "--trust-factory: importing dataset factory 'subprocess:getoutput'" in err
    assert hostile["marker"].exists()
    assert code == 2  # getoutput returns a string, not a dataset: a one-line error after the import


@pytest.fixture
def user_factory(tmp_path: Path, monkeypatch) -> str:
    """A model factory module of the user's, importable as ``user_models:small``."""
    (tmp_path / "user_models.py").write_text(
        "from torch import nn\n"
        "def small(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models:small"


def test_factory_the_user_passes_is_imported(cli, user_factory: str, tmp_path: Path) -> None:
    """train --model pkg:f imports it; a later command on that checkpoint needs --trust-factory or the name."""
    out = tmp_path / "trained"
    code, _, err = cli("train", "--model", user_factory, "--epochs", "1", "--out", out, "--device", "cpu")
    assert code == 0, err
    ckpt = out / "model.pt"
    code, _, err = cli("sweep", "--checkpoint", ckpt, "--sparsities", "0.5", "--out", tmp_path / "s", "--device", "cpu")
    assert code == 2 and f"model factory {user_factory!r}" in err
    code, _, err = cli(
        "sweep",
        "--checkpoint",
        ckpt,
        "--sparsities",
        "0.5",
        "--out",
        tmp_path / "s",
        "--device",
        "cpu",
        "--trust-factory",
    )
    assert code == 0 and f"importing model factory {user_factory!r}" in err
    # training resumes into the same --out: the run's own factory is trusted without the flag
    code, _, err = cli("train", "--model", user_factory, "--epochs", "2", "--out", out, "--device", "cpu")
    assert code == 0, err
    # in Python: trusting that one name by itself, or everything
    assert isinstance(load_checkpoint(ckpt, trust_factory=[user_factory]).model, torch.nn.Module)
    assert isinstance(load_checkpoint(ckpt, trust_factory=True).model, torch.nn.Module)
    with pytest.raises(UsageError, match="does not import from a file"):
        load_checkpoint(ckpt)
    with pytest.raises(UsageError, match="does not import from a file"):
        load_checkpoint(ckpt, trust_factory=["other:name"])


def test_zoo_checkpoints_need_no_trust(tmp_path: Path, digits_spec: dict) -> None:
    path = _save(tmp_path / "m.pt", model_spec("mlp", SHAPE, 10), digits_spec)
    assert load_checkpoint(path).model_spec["name"] == "mlp"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_spec": {"name": 3}}, "model spec has no name"),
        ({"model_spec": ["mlp"]}, "'model_spec' is a list"),
        ({"dataset_spec": {"name": ["a:b"]}}, "dataset spec has no name"),
        ({"state_dict": [1, 2]}, "'state_dict' is a list"),
    ],
)
def test_damaged_specs_are_one_line_errors(tmp_path: Path, digits_spec: dict, changes: dict, message: str) -> None:
    path = _rewrite(_save(tmp_path / "m.pt", model_spec("mlp", SHAPE, 10), digits_spec), **changes)
    with pytest.raises(UsageError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, digits_spec: dict, value: float) -> None:
    path = _save(tmp_path / "m.pt", model_spec("mlp", SHAPE, 10), digits_spec)
    state = torch.load(path, weights_only=True)["state_dict"]
    name = next(iter(state))
    state[name].view(-1)[3] = value
    _rewrite(path, state_dict=state)
    with pytest.raises(UsageError, match=f"NaN or infinite values in {name!r}"):
        load_checkpoint(path)
