"""The main job end to end on digits, with small settings: outputs, test read once, resume by stage."""

import json
from collections import Counter

import pytest

from prunescope.cli import main
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.pipeline import job as pipeline
from prunescope.pipeline.config import RunConfig

FAST = RunConfig(epochs=3, folds=0, finetune_epochs=2, sparsity=0.8, sparsities=(0.5, 0.8), methods=("ours", "uniform"),
                 scratch=("E",), device="cpu", recovered=False, reconstruct=None)


class Recorder:
    """Counts progress calls per stage and test-split evaluations."""

    def __init__(self, monkeypatch, data_name="test"):
        self.stages = Counter()
        self.test_reads = 0
        original = Evaluator.evaluate
        recorder = self

        def counting(evaluator):
            if len(evaluator) == 360:  # digits' test split (1797 · 20%, stratified)
                recorder.test_reads += 1
            return original(evaluator)

        monkeypatch.setattr(Evaluator, "evaluate", counting)

    def __call__(self, stage, done, total):
        self.stages[stage] += 1


def test_run_writes_every_output_and_reads_test_once_per_model(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    doc = pipeline.run(FAST, tmp_path, progress=recorder)
    assert doc["schema"] == "prunescope.result" and doc["version"] == 2 and doc["command"] == "run"
    assert [m["method"] for m in doc["methods"]] == ["ours", "uniform"]
    assert all(m["test"] is not None and m["finetune"]["history"] for m in doc["methods"])
    assert [s["mode"] for s in doc["scratch"]] == ["E"] and doc["scratch"][0]["epochs"] == FAST.epochs
    assert recorder.test_reads == 1 + 2 + 1  # dense, two methods, one scratch run
    for name in ("result.json", "report.html", "methods.csv", "one_shot.csv", "model.pt", "scan/scan.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "result.json").read_text())["verdict"] == doc["verdict"]
    # Every method at the compared sparsity removes the same number of weights.
    kept = {m["measure"]["params_nonzero"] for m in doc["methods"]}
    assert len(kept) == 1 and kept.pop() < doc["dense"]["measure"]["params_nonzero"]


def test_killed_run_resumes_at_the_stage_where_it_stopped(tmp_path, monkeypatch):
    finetune = pipeline.finetune

    def dies_on_uniform(*args, checkpoint, **kwargs):
        if "uniform" in str(checkpoint):
            raise KeyboardInterrupt
        return finetune(*args, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(pipeline, "finetune", dies_on_uniform)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(FAST, tmp_path)
    assert not (tmp_path / "result.json").exists()
    monkeypatch.setattr(pipeline, "finetune", finetune)

    recorder = Recorder(monkeypatch)
    doc = pipeline.run(FAST, tmp_path, progress=recorder)
    assert recorder.stages["dense training"] == 0  # the dense model was loaded, not retrained
    assert recorder.stages["fine-tuning ours"] == 0  # finished before the kill
    assert recorder.stages["fine-tuning uniform"] == FAST.finetune_epochs
    curves = doc["scan"]["curves"]
    assert curves["reused"] == curves["evaluations"]  # no scan evaluation repeated
    # A rerun of a finished run reads the test split no more.
    recorder = Recorder(monkeypatch)
    pipeline.run(FAST, tmp_path, progress=recorder)
    assert recorder.test_reads == 0


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown method 'magic'"):
        pipeline.run(RunConfig(methods=("ours", "magic")), tmp_path)


def test_run_command_with_a_config_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 2\nfolds = 0\nfinetune_epochs = 1\nmethods = ["ours", "lamp"]\nscratch = []\n'
                      'sparsities = [0.7]\nsparsity = 0.7\ndevice = "cpu"\n')
    with pytest.raises(SystemExit) as done:
        main(["run", "--config", str(config), "--out", str(tmp_path / "out")])
    assert (done.value.code or 0) == 0
    out = capsys.readouterr().out
    assert "every method at 70% sparsity" in out and "lamp" in out
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "out")])
    assert (done.value.code or 0) == 0


def test_report_of_a_missing_directory_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "nowhere")])
    assert done.value.code == 2
    assert "\n" not in capsys.readouterr().err.strip()
