"""torch.export files of physically pruned models: they load without prunescope and compute the same function.

Also the operator-level MAC counter that measures them, and ``prunescope measure``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from prunescope.checkpoint import save_checkpoint
from prunescope.errors import UsageError
from prunescope.measure import count_macs
from prunescope.models import build_model, model_spec
from prunescope.structured.export import (
    FORMAT,
    export_model,
    is_exported,
    load_exported,
    max_output_difference,
)
from prunescope.structured.find import find_groups, pruned_copy
from prunescope.structured.groups import pruned_spec

SHAPE = (1, 16, 16)

# Runs in a fresh interpreter where importing prunescope fails: the file must need torch only.
LOAD_WITHOUT_PRUNESCOPE = """
import sys
sys.modules["prunescope"] = None
import json, torch
inputs, out = sys.argv[1], sys.argv[2]
outputs = {}
for path, x in torch.load(inputs).items():
    extra = {"prunescope.json": ""}
    program = torch.export.load(path, extra_files=extra)
    assert json.loads(extra["prunescope.json"])["format"] == "prunescope-export"
    with torch.no_grad():
        outputs[path] = {batch: program.module()(xb) for batch, xb in x.items()}
torch.save(outputs, out)
"""


def half_pruned(name: str) -> tuple[nn.Module, dict[str, list[int]]]:
    """Zoo model ``name`` on SHAPE with every other channel of every group removed physically."""
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 10).eval()
    removal = {group: list(range(0, g.width, 2)) for group, g in find_groups(model, SHAPE).groups.items()}
    return pruned_copy(model, SHAPE, removal).eval(), removal


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """``{name: (pruned model in memory, its exported file)}`` for resnet20 and lstm."""
    folder = tmp_path_factory.mktemp("exports")
    made = {}
    for name in ("resnet20", "lstm"):
        model, removal = half_pruned(name)
        metadata = {"model_spec": model_spec(name, SHAPE, 10), "num_classes": 10, "removal": removal}
        made[name] = (model, export_model(model, SHAPE, folder / f"{name}.pt2", metadata))
    return made


def test_export_loads_without_prunescope_and_matches(exports, tmp_path: Path) -> None:
    torch.manual_seed(1)
    inputs = {str(path): {batch: torch.randn(batch, *SHAPE) for batch in (1, 5)} for _, path in exports.values()}
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PRUNESCOPE, str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        check=True,
        cwd=tmp_path,
        timeout=120,
    )
    outputs = torch.load(tmp_path / "outputs.pt")
    for model, path in exports.values():
        for batch, x in inputs[str(path)].items():
            with torch.no_grad():
                expected = model(x)
            assert outputs[str(path)][batch].shape == (batch, 10)
            assert torch.allclose(outputs[str(path)][batch], expected, atol=1e-5), (path.name, batch)


def test_load_exported_gives_module_and_metadata(exports) -> None:
    model, path = exports["lstm"]
    loaded = load_exported(path, trusted=True)
    assert is_exported(path)
    assert loaded.metadata["format"] == FORMAT and loaded.metadata["version"] == 1
    assert loaded.metadata["input_shape"] == list(SHAPE) and loaded.metadata["model_spec"]["name"] == "lstm"
    assert loaded.metadata["torch_version"] == torch.__version__
    assert loaded.module.eval() is loaded.module  # allowed: the graph was captured in eval mode
    with pytest.raises(NotImplementedError):
        loaded.module.train()
    assert max_output_difference(model, loaded.module, torch.randn(3, *SHAPE)) <= 1e-5


def damaged_json(path: Path, target: Path) -> Path:
    """A copy of archive ``path`` whose serialized graph is not JSON (the zip itself intact)."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as copy:
        for entry in source.namelist():
            copy.writestr(entry, b"{not json" if entry.endswith("models/model.json") else source.read(entry))
    return target


@pytest.mark.parametrize("kind", ["truncated", "damaged graph", "random bytes", "missing"])
def test_unreadable_files_are_one_line_usage_errors(exports, tmp_path: Path, kind: str) -> None:
    _, good = exports["resnet20"]
    path = tmp_path / "model.pt2"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "damaged graph":
        damaged_json(good, path)
    elif kind == "random bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(UsageError) as error:
        load_exported(path, trusted=True)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert "prune --granularity channel --export" in str(error.value)  # says how to make a good one
    assert is_exported(path) == (kind == "damaged graph")


@pytest.mark.parametrize("name", ["resnet20", "lstm"])
def test_exported_module_has_the_pruned_models_macs(exports, name: str) -> None:
    model, path = exports[name]
    dense = count_macs(build_model(name, SHAPE, 10), SHAPE).dense
    macs = count_macs(model, SHAPE).dense
    assert count_macs(load_exported(path, trusted=True).module, SHAPE).dense == macs < dense


def test_measure_command_on_an_export(cli, exports, tmp_path: Path, monkeypatch) -> None:
    from prunescope.cli.terminal import console

    # Wide enough that no cell wraps: the column widths follow the measured timings, longer on a slower CPU.
    monkeypatch.setattr(console, "width", 400)
    _, path = exports["lstm"]
    out = tmp_path / "measure.json"
    code, stdout, stderr = cli(
        "measure", "--checkpoint", path, "--trust-export", "--device", "cpu", "--batch-sizes", "1,2", "--repeats", "1",
        "--json", out
    )
    assert code == 0, stderr
    assert "speed-up" in stdout and "MAC reduction" in stdout and "dense (rebuilt from spec)" in stdout
    doc = json.loads(out.read_text())
    assert doc["command"] == "measure" and doc["runtime"] == "torch.export graphs"
    assert set(doc["speedup"]) == {"1", "2"} and all(s > 0 for s in doc["speedup"].values())
    assert doc["model"]["params"] < doc["dense"]["params"]
    assert doc["mac_reduction"] == pytest.approx(doc["dense"]["macs"] / doc["model"]["macs"])
    assert doc["mac_reduction"] > 3  # half the hidden units: about a quarter of the LSTM's MACs


def test_measure_command_on_a_channel_pruned_checkpoint(cli, tmp_path: Path) -> None:
    shape = (1, 8, 8)
    model = build_model("mlp", shape, 10).eval()
    groups = find_groups(model, shape)
    removal = {group: list(range(0, g.width, 2)) for group, g in groups.groups.items()}
    spec = pruned_spec(model_spec("mlp", shape, 10), groups, removal)
    path = save_checkpoint(tmp_path / "model.pt", groups.prune(removal), spec, {"name": "synthetic"})
    out = tmp_path / "measure.json"
    code, stdout, stderr = cli(
        "measure", "--checkpoint", path, "--device", "cpu", "--batch-sizes", "4", "--repeats", "1", "--json", out
    )
    assert code == 0, stderr
    assert "speed-up" in stdout
    doc = json.loads(out.read_text())
    assert doc["runtime"] == "eager" and doc["dense_reference"] == "dense (rebuilt from spec)"
    assert doc["dense"]["macs"] == count_macs(build_model("mlp", shape, 10), shape).dense > doc["model"]["macs"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--batch-sizes", "1,x", "--batch-sizes"), ("--batch-sizes", "0", "positive"), ("--repeats", "0", "--repeats")]
    + ([] if torch.cuda.is_available() else [("--device", "cuda", "no CUDA GPU")]),
)
def test_measure_bad_options_are_one_line_errors(cli, exports, option: str, value: str, message: str) -> None:
    _, path = exports["resnet20"]
    code, _, stderr = cli("measure", "--checkpoint", path, "--trust-export", option, value)
    assert code == 2 and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_an_export_is_read_only_when_trusted(cli, exports) -> None:
    """torch.export.load can run code from a crafted file: prunescope opens one only when told it is trusted."""
    _, path = exports["resnet20"]
    with pytest.raises(UsageError, match="--trust-export"):
        load_exported(path)
    code, _, stderr = cli("measure", "--checkpoint", path, "--device", "cpu")
    assert code == 2 and "can run code" in stderr and len(stderr.strip().splitlines()) == 1


def test_the_export_check_allows_rounding_also_where_it_breaks_a_tie_and_refuses_other_outputs(monkeypatch, tmp_path):
    from prunescope.data.types import Split
    from prunescope.errors import PrunescopeError
    from prunescope.pipeline import prune as prune_module
    from prunescope.structured.export import Exported

    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    split = Split(torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([0, 1, 0]))  # the last: a tie

    class Shifted(nn.Module):
        """The model's logits plus ``by``: what an export computing on other kernels (or wrongly) gives."""

        def __init__(self, by: list[float]) -> None:
            super().__init__()
            self.by = torch.tensor(by)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x) + self.by

    def check(by: list[float]) -> float:
        monkeypatch.setattr(prune_module, "load_exported", lambda *args, **kwargs: Exported(Shifted(by), {}))
        return prune_module.check_export(model, tmp_path / "model.pt2", split, torch.device("cpu"))[0]

    # Rounding-sized differences pass, also where they swap the tied example's prediction (0 → 1).
    assert Shifted([0.0, 1e-6])(split.x).argmax(1).tolist() == [0, 1, 1]
    assert check([0.0, 1e-6]) == pytest.approx(1e-6)
    for by in ([0.0, 1e-2], [-1.0, 0.0], [float("nan"), 0.0]):  # other outputs, other predictions, NaN
        with pytest.raises(PrunescopeError, match="does not reproduce the pruned model"):
            check(by)
