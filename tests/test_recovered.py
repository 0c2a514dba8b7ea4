"""The recovered answer in `prunescope run`: fine-tuned sweep, bisection on val, test read once at the answer."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from test_run import FAST, Recorder

from prunescope.checkpoint import load_checkpoint
from prunescope.data import load_dataset
from prunescope.measure import count_macs
from prunescope.models import build_model, model_spec
from prunescope.pick.reach import reach
from prunescope.pipeline import job as pipeline
from prunescope.pipeline.recovered import gradual_at
from prunescope.report.verdict import recovered_sentence
from prunescope.targets import find_targets
from prunescope.train import TrainConfig, train
from prunescope.trust import Trust

RECOVERED = replace(FAST, recovered=True, recovered_sparsities=(0.5, 0.9), reconstruct="mask", calibration=256,
                    max_drop=0.02, scratch=())


def test_run_answers_how_far_after_fine_tuning_and_reads_test_once_there(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    doc = pipeline.run(RECOVERED, tmp_path, progress=recorder)
    recovered = doc["recovered"]
    reach = recovered["reach"]
    swept = [p["sparsity"] for p in reach["points"]]
    assert {0.5, 0.9} <= set(swept) and recovered["baseline"] == "uniform"
    bound = recovered["dense_val"] - RECOVERED.max_drop
    answer = recovered["answer"]
    # The answer is an evaluated point within the bound, below every evaluated point outside it.
    assert answer in swept and next(p["score"] for p in reach["points"] if p["sparsity"] == answer) >= bound
    assert all(p["sparsity"] > answer for p in reach["points"] if p["score"] < bound)
    # ours and the baseline are fine-tuned at the same sparsities, each model at exactly its sparsity.
    swept_by = {method: [p["sparsity"] for p in points] for method, points in recovered["curves"].items()}
    assert swept_by["ours"] == swept_by["uniform"]
    for point in recovered["curves"]["ours"]:
        saved = load_checkpoint(tmp_path / "recovered" / f"ours@{point['sparsity']:g}" / "model.pt",
                                trust_factory=Trust.of_specs(doc["model"], doc["dataset"])).model
        targets = find_targets(saved)
        zeros = sum(int((saved.get_submodule(t.module).weight == 0).sum()) for t in targets)
        assert abs(zeros / sum(t.numel for t in targets) - point["sparsity"]) < 2 / 1000
    # test: dense, two fine-tuned methods, and, for the recovered answer, its model and the AGP run.
    assert recorder.test_reads == 1 + 2 + (2 if answer > 0 else 0)
    assert any("epochs of fine-tuning" in sentence for sentence in doc["verdict"])
    assert doc["one_shot_reconstructed"]["reconstruct"] == "mask"
    assert any("layer-wise reconstruction" in sentence for sentence in doc["verdict"])
    # A rerun trains nothing again and reads the test split no more.
    recorder = Recorder(monkeypatch)
    assert pipeline.run(RECOVERED, tmp_path, progress=recorder)["recovered"] == json.loads(json.dumps(recovered))
    assert recorder.test_reads == 0 and not any("fine-tuning" in stage for stage in recorder.stages)


CHANNELS = replace(FAST, recovered=True, recovered_sparsities=(0.5, 0.9), granularity="channel",
                   removed_macs=(0.3, 0.6), max_drop=0.03, scratch=(), methods=("ours",), sparsities=(0.8,))


def test_run_answers_how_many_times_fewer_macs_after_removing_channels(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    doc = pipeline.run(CHANNELS, tmp_path, progress=recorder)
    structured = doc["recovered_channels"]
    reach = structured["reach"]
    bound = structured["dense_val"] - CHANNELS.max_drop
    assert {0.3, 0.6} <= {p["sparsity"] for p in reach["points"]}
    answer = structured["answer"]
    assert all(p["sparsity"] > answer for p in reach["points"] if p["score"] < bound)
    for point in structured["points"]:  # each model trained is physically smaller, by at least the MACs asked
        if point["macs"] is not None:
            saved = load_checkpoint(tmp_path / "recovered" / f"channel@{point['removed_macs']:g}" / "model.pt",
                                    trust_factory=Trust.of_specs(doc["model"], doc["dataset"])).model
            assert count_macs(saved, tuple(doc["model"]["input_shape"])).dense == point["macs"]
    if answer > 0:
        assert structured["mac_reduction"] >= 1 / (1 - answer) - 1e-9  # met exactly on the footprint
        assert structured["measure"]["mac_reduction"] == structured["mac_reduction"]
        assert set(structured["measure"]["speedup"]) == {"1", "256"}
        assert any("removing channels cuts the MACs" in sentence for sentence in doc["verdict"])
    # A rerun trains nothing again and reads the test split no more.
    recorder = Recorder(monkeypatch)
    assert pipeline.run(CHANNELS, tmp_path, progress=recorder)["recovered_channels"] == json.loads(
        json.dumps(structured))
    assert recorder.test_reads == 0 and not any("fine-tuning" in stage for stage in recorder.stages)


def test_gradual_at_reaches_exactly_the_sparsity_with_the_epochs_of_one_fine_tuning_run(tmp_path):
    data = load_dataset("digits", seed=0)
    spec = model_spec("mlp", data.input_shape, data.num_classes)
    dense = train(build_model("mlp", data.input_shape, data.num_classes), data, TrainConfig(epochs=5, seed=0),
                  device="cpu").model
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    result = gradual_at(dense, data, 0.8, TrainConfig(epochs=4, lr=0.01, seed=0), tmp_path, spec, device="cpu")
    assert result["error"] is None
    assert (result["steps"], result["epochs"]) == (4, 4)  # min(epochs, 5) steps, one epoch after each
    last = load_checkpoint(tmp_path / "step-004.pt", trust_factory=Trust.of_specs(spec, data.spec)).model
    targets = find_targets(last)
    zeros = sum(int((last.get_submodule(t.module).weight == 0).sum()) for t in targets)
    assert abs(zeros - 0.8 * sum(t.numel for t in targets)) <= len(targets)  # round(s · n) per layer
    assert result["test"]["accuracy"] > 0.5
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())  # the dense model is untouched


def test_gradual_at_says_why_when_global_magnitude_would_empty_a_layer(tmp_path):
    # fc2 (48% of the weights) scaled far below the rest: global magnitude removes all of it at the first step.
    data = load_dataset("digits", seed=0)
    spec = model_spec("mlp", data.input_shape, data.num_classes)
    model = build_model("mlp", data.input_shape, data.num_classes)
    with torch.no_grad():
        model.fc2.weight.mul_(1e-3)
    result = gradual_at(model, data, 0.9, TrainConfig(epochs=4, seed=0), tmp_path, spec, device="cpu")
    assert result["val"] is None and result["test"] is None and "outside [0, 1)" in result["error"]
    recovered = {"epochs": 4, "answer": 0.9, "test": {"accuracy": 0.9}, "gradual": result,
                 "reach": {"points": [{"sparsity": 0.9}]}}
    assert "could not run" in recovered_sentence(recovered, 0.005)


def test_a_sweep_that_does_not_bracket_the_bound_is_widened_and_the_verdict_says_so():
    # Synthetic accuracy after recovery: within 0.5 pts of 0.98 up to 97.5%, far below beyond.
    found = reach(lambda s: 0.98 if s <= 0.975 else 0.5, 0.98, [0.5, 0.7], 0.005)
    assert found.widened[:2] == [0.85, 0.925] and found.first_failure is not None
    assert 0.96 <= found.answer <= 0.975
    recovered = {"epochs": 3, "answer": found.answer, "test": {"accuracy": 0.97}, "gradual": None,
                 "reach": found.to_dict()}
    sentence = recovered_sentence(recovered, 0.005)
    assert "did not bracket the bound, so it was widened with 85.0%, 92.5%" in sentence
    # A list that brackets the bound is not widened, and the sentence says nothing of it.
    bracketed = reach(lambda s: 0.98 if s <= 0.975 else 0.5, 0.98, [0.5, 0.99], 0.005)
    assert bracketed.widened == []
    assert "widened" not in recovered_sentence({**recovered, "reach": bracketed.to_dict()}, 0.005)
