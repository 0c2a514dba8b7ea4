"""``prunescope hparams`` end to end on a tiny configuration, its resume and its bad input."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from conftest import run_cli

from prunescope.checkpoint import load_checkpoint
from prunescope.errors import UsageError
from prunescope.hparams import HparamsConfig, study
from prunescope.hparams.studies import JOURNAL, finished
from prunescope.trials.storage import open_storage

TINY_SPACE = """epochs = 2
[lr]
low = 0.005
high = 0.5
log = true
[weight_decay]
low = 1e-6
high = 1e-2
log = true
"""
TINY = ["--limit-train", "300", "--budget", "4", "--grid", "2x2", "--seeds", "2", "--device", "cpu"]


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The default study (mlp on digits, channel pruning) shrunk to seconds."""
    root = tmp_path_factory.mktemp("hparams")
    space = root / "space.toml"
    space.write_text(TINY_SPACE)
    out = root / "out"
    return root, space, out


def test_tiny_default_study_runs_and_resumes(tiny_run, capsys):
    _, space, out = tiny_run
    code, stdout, stderr = run_cli(capsys, "hparams", "--space", space, "--target-macs", "1,0.5", "--out", out, *TINY)
    assert code == 0, stderr
    doc = json.loads((out / "result.json").read_text())
    assert doc["command"] == "hparams"
    section = doc["hparams"]
    assert [ls["degree"]["level"] for ls in section["landscapes"]] == [1.0, 0.5]
    assert np.array(section["landscapes"][1]["values"]).shape == (2, 2, 2)
    assert section["landscapes"][1]["degree"]["macs_fraction"] <= 0.5
    assert len(section["search"]["trials"]) == 4
    assert set(section["grid"]["axes"]) == {"lr", "weight_decay"}
    assert section["verdict"]["sentence"] in stdout.replace("\n", " ") or "dense hyperparameters" in stdout
    assert (out / "landscapes.csv").read_text().count("\n") == 1 + 2 * 2 * 2 * 2
    # the dense degree against itself is its own floor
    dense_shift = section["landscapes"][0]["shift"]
    assert not dense_shift["distance"]["significant"] and not dense_shift["regret"]["significant"]

    html = (out / "report.html").read_text()
    assert "Hyperparameter sensitivity under pruning" in html and "class=\"section-error\"" not in html
    assert html.count("data:image/png;base64") >= 3  # search history, landscapes and shift curves
    assert "dense search history" in html
    code, stdout, _ = run_cli(capsys, "report", out)
    assert code == 0 and "landscape shift" in stdout

    # a rerun trains nothing: every trial is found in the journal
    storage = open_storage(out / JOURNAL)
    before = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    code, _, stderr = run_cli(capsys, "hparams", "--space", space, "--target-macs", "1,0.5", "--out", out, *TINY)
    assert code == 0, stderr
    after = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(open_storage(out / JOURNAL))}
    assert before == after
    assert json.loads((out / "result.json").read_text())["hparams"]["landscapes"][1]["values"] == \
        section["landscapes"][1]["values"]


def test_resumed_study_with_another_space_is_refused(tiny_run, capsys):
    root, _, out = tiny_run
    if not (out / "result.json").exists():
        pytest.skip("needs the tiny run")
    other = root / "other.toml"
    other.write_text(TINY_SPACE.replace("low = 0.005", "low = 0.001"))
    before = _snapshot(out)
    code, _, stderr = run_cli(capsys, "hparams", "--space", other, "--target-macs", "1,0.5", "--out", out, *TINY)
    assert code == 2
    assert "lr" in stderr and "0.005" in stderr and "0.001" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert _snapshot(out) == before


@pytest.mark.parametrize("args, message", [
    (["--granularity", "weight", "--sparsities", "0.5,0.9"], "must include 0"),
    (["--target-macs", "0.7,0.5"], "must include 1"),
    (["--target-macs", "1,1.5"], "in (0, 1]"),
    (["--grid", "30x30"], "above the limit"),
    (["--seeds", "1"], "at least 2"),
    (["--storage", "nosuchdialect://x/y"], "cannot open storage"),
    (["--search", "cma"], "unknown search"),
    (["--recover", "magic"], "unknown --recover"),
    (["--granularity", "weight", "--allocator", "knapsack"], "unknown allocator"),
    (["--sparsities", "0,0.5"], "applies to --granularity weight"),
    (["--executor", "threads"], "unknown executor 'threads'"),
    (["--executor", "local", "--workers", "2"], "the local executor has one worker"),
    (["--heartbeat-interval", "10", "--grace-period", "5"], "grace period longer than it"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "hparams", "--out", out, *args)
    assert code == 2, stderr
    assert message in stderr.replace("\n", " ")
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("epochs = 3\n", "searches nothing"),
    ("[lr]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "bounds must be positive"),
    ("[lr]\nlow = 0.5\nhigh = 0.1\n", "above high"),
    ("[lr\n", "not valid TOML"),
])
def test_bad_space_file(tmp_path, capsys, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "hparams", "--space", space, "--out", out)
    assert code == 2 and message in stderr
    assert not out.exists()


def test_python_api_returns_every_table(tmp_path):
    from conftest import make_dataset

    config = HparamsConfig(model="mlp", space={
        "lr": {"low": 0.01, "high": 0.5, "log": True}, "momentum": {"low": 0.0, "high": 0.9}, "epochs": 2},
        budget=3, grid="2x2", seeds=2, granularity="weight", levels=(0.0, 0.8), allocator="global", device="cpu")
    result = study(config, tmp_path, data=make_dataset())
    assert len(result.landscape_rows()) == 2 * 2 * 2 * 2
    measures = {row["measure"] for row in result.shift_rows()}
    assert {"distance", "regret", "rank", "displacement[lr]", "importance[momentum]"} <= measures
    pruned = result.landscapes[1].degree
    assert pruned["removed"] == 0.8 and pruned["allocation"]
    storage = open_storage(tmp_path / JOURNAL)
    grid_study = optuna.load_study(study_name="grid weight global 0.8", storage=storage)
    assert len(finished(grid_study)) == 8


def test_a_study_of_the_users_own_model_loads_the_checkpoints_it_makes(tiny_run, tmp_path, capsys):
    """The factory named by --model is trusted in the checkpoints the study writes of it, and no further."""
    _, space, _ = tiny_run
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "hparams", "--model", "own_models:attention", "--space", space,
                              "--granularity", "weight", "--sparsities", "0,0.8", "--allocator", "global",
                              "--out", out, *TINY)
    assert code == 0, stderr
    landscapes = json.loads((out / "result.json").read_text())["hparams"]["landscapes"]
    assert [ls["degree"]["level"] for ls in landscapes] == [0.0, 0.8]
    assert np.array(landscapes[1]["values"]).shape == (2, 2, 2)
    with pytest.raises(UsageError, match="factory 'own_models:attention'"):  # read by anyone else: refused
        load_checkpoint(out / "pruned" / "weight-global-0.8" / "model.pt")


def test_run_gains_an_optional_hparams_stage(tmp_path, monkeypatch):
    from dataclasses import replace

    import prunescope.hparams
    from prunescope.pipeline import job as pipeline
    from prunescope.pipeline.config import RunConfig

    calls = []

    class Done:
        def to_dict(self):
            return {"verdict": {"sentence": "the dense hyperparameters hold at every degree tested, up to 0.25x MACs"}}

    def fake_study(config, out, progress=None):
        calls.append((config, out))
        return Done()

    monkeypatch.setattr(prunescope.hparams, "study", fake_study)
    fast = RunConfig(epochs=2, folds=0, finetune_epochs=1, sparsity=0.8, sparsities=(0.8,), methods=("uniform",),
                     scratch=(), device="cpu")
    assert "hparams" not in pipeline.run(fast, tmp_path / "off")  # off by default
    assert calls == []
    doc = pipeline.run(replace(fast, hparams=True), tmp_path / "on")
    (config, out), = calls
    assert out == tmp_path / "on" / "hparams" and config.model == "mlp" and config.data == "digits"
    assert doc["hparams"]["verdict"]["sentence"].startswith("the dense hyperparameters hold")
    assert doc["verdict"][-1].startswith("hyperparameters: the dense hyperparameters hold")
