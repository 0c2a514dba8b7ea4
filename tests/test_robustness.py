"""Nothing lost or left changed: masks restored bit-exactly after an exception at any forward
pass, outputs written atomically, damaged caches recomputed, paths resolved (issue 11)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from prunescope.cli.options import assignments
from prunescope.errors import PrunescopeError, UsageError
from prunescope.hparams.space import load_space
from prunescope.io import atomic_write, check_output_dir, check_output_file, read_json, read_toml, write_json
from prunescope.pipeline.compare import compare
from prunescope.pipeline.config import load_config
from prunescope.pipeline.job import Stages
from prunescope.pipeline.sweep import sweep
from prunescope.scan import scan


class Boom(Exception):
    pass


def _bits(model: torch.nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer as raw bytes: -0.0 and NaN payloads count, not only values."""
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


def _fail_at(model: torch.nn.Module, call: int) -> tuple[torch.utils.hooks.RemovableHandle, list[int]]:
    """Raise Boom at forward pass number ``call`` (0-based) of ``model``; return the hook and the count."""
    count = [0]

    def hook(module, args):
        count[0] += 1
        if count[0] - 1 == call:
            raise Boom

    return model.register_forward_pre_hook(hook), count


WORKLOADS = {
    "sweep": lambda m, d, tmp: sweep(
        m, d, [0.5, 0.9], criterion="magnitude", allocation="erk", device="cpu", latency_repeats=1
    ),
    "compare": lambda m, d, tmp: compare(m, d, [0.7], ["uniform", "global", "lamp"], device="cpu", test=False),
    "scan": lambda m, d, tmp: scan(
        m, d, strategy="grid", levels=[0.5, 0.9], device="cpu", storage=tmp / "study.journal"
    ),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_an_exception_at_any_forward_pass_restores_the_model_bit_exactly(workload, tiny_model, tiny_data, tmp_path):
    run = WORKLOADS[workload]
    with torch.no_grad():
        tiny_model.fc1.weight[0, 0] = -0.0  # a negative zero, whose sign a restore through arithmetic would lose
    before, training = _bits(tiny_model), tiny_model.training
    hook, count = _fail_at(tiny_model, -1)
    run(tiny_model, tiny_data, tmp_path / "clean")
    hook.remove()
    total = count[0]
    assert total > 3 and _bits(tiny_model) == before
    calls = sorted({0, 1, total // 3, total // 2, total - 1} | set(range(0, total, max(1, total // 12))))
    for call in calls:
        hook, _ = _fail_at(tiny_model, call)
        with pytest.raises((Boom, UsageError)):  # a probe pass reports its failure as a UsageError
            run(tiny_model, tiny_data, tmp_path / f"at{call}")
        hook.remove()
        assert _bits(tiny_model) == before, f"{workload}: model changed after an exception at forward {call}"
        assert tiny_model.training == training


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = write_json(tmp_path / "result.json", {"old": 1})

    def disk_full(file) -> None:
        file.write(b"{half")
        raise OSError(28, "No space left on device")

    with pytest.raises(PrunescopeError, match="no space left on device") as error:
        atomic_write(path, disk_full)
    assert error.value.exit_code == 1
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["result.json"]


def test_an_output_path_that_cannot_exist_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    with pytest.raises(UsageError, match="cannot write"):
        write_json(blocker / "result.json", {})
    with pytest.raises(UsageError, match="cannot write"):
        write_json(tmp_path, {})  # a directory where the file should go
    assert blocker.read_text() == "keep"
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_output_dir(blocker)
    with pytest.raises(UsageError, match="which is a file"):
        check_output_dir(blocker / "sub" / "deeper")
    with pytest.raises(UsageError, match="is a directory"):
        check_output_file(tmp_path, "--json")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="cannot write in"):
            check_output_dir(folder / "out")
    finally:
        folder.chmod(0o755)


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the JSON and TOML parsers' recursion


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b'{"a": 1,}', "is not valid JSON (line 1, column 9"),
        (DEEP.encode(), "is not valid JSON (nested too deeply)"),
        (b'{"a": NaN}', "is not valid JSON (NaN is not a finite number)"),
    ],
)
def test_a_json_file_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, content, message) -> None:
    path = tmp_path / "f.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as error:
        read_json(path, f"the file {path}", finite=True, hint="write it again")
    text = str(error.value)
    assert message in text and str(path) in text and text.endswith("; write it again") and "\n" not in text
    with pytest.raises(UsageError, match="is a directory"):
        read_json(tmp_path, "the folder")


@pytest.mark.parametrize(("text", "message"), [("a = [\n", "is not valid TOML: "),
                                               (f"a = {DEEP}\n", "is not valid TOML (nested too deeply)")])
def test_a_toml_file_that_cannot_be_parsed_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)):
        read_toml(path, "the file")
    with pytest.raises(UsageError, match=re.escape(message)):  # every TOML reader of user files goes through it
        load_space(path)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_config(path, {})


def test_a_model_arg_nested_too_deeply_is_a_string_not_a_traceback() -> None:
    assert assignments("--model-arg", [f"hidden={DEEP}"]) == {"hidden": DEEP}


@pytest.mark.parametrize(
    "content", ["[1, 2]", '"text"', "{bad json", '{"key": "k"}', '{"key": "k", "result": 3}', DEEP]
)
def test_a_damaged_stage_cache_is_recomputed(tmp_path: Path, content: str) -> None:
    stages = Stages(tmp_path)
    stages.directory.mkdir()
    (stages.directory / "pick.json").write_text(content)
    calls = []
    result = stages.get("pick", {"a": 1}, lambda: calls.append(1) or {"value": 2})
    assert result == {"value": 2} and calls == [1]
    assert stages.get("pick", {"a": 1}, lambda: calls.append(1) or {"value": 3}) == {"value": 2} and calls == [1]


def test_pick_finds_a_relative_checkpoint_from_another_directory(cli, tmp_path: Path, monkeypatch) -> None:
    """The scan records the checkpoint's absolute path, so pick works from anywhere."""
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    code, _, err = cli("train", "--epochs", "1", "--out", "runs", "--device", "cpu")
    assert code == 0, err
    code, _, err = cli(
        "scan",
        "--checkpoint",
        "runs/model.pt",
        "--out",
        "scan",
        "--strategy",
        "grid",
        "--tolerance",
        "2",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert json.loads((here / "scan" / "scan.json").read_text())["checkpoint"] == str(here / "runs" / "model.pt")
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("pick", "--scan", here / "scan", "--max-drop", "2", "--device", "cpu")
    assert code == 0, err
    assert (here / "scan" / "pick.json").is_file()
