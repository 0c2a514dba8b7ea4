"""OWL and AlphaPruning in compare and sweep, N:M patterns in sweep, prune and measure, from the command line."""

from __future__ import annotations

import json

import pytest
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.masks import removed_count
from prunescope.measure.semistructured import CPU_LINE, semi_structured_speedup, two_four_linears
from prunescope.targets import find_targets


def test_compare_puts_owl_and_alpha_beside_the_baselines_at_equal_sparsity(cli, dense, tmp_path):
    code, out, _ = cli("compare", "--checkpoint", dense, "--allocations", "uniform,owl,alpha,owl-tuned,alpha-tuned",
                       "--sparsities", "0.5,0.8", "--criterion", "wanda", "--no-test", "--out", tmp_path,
                       "--device", "cpu")
    assert code == 0, out
    comparison = json.loads((tmp_path / "result.json").read_text())["comparison"]
    total = comparison["weights"]
    rows = {(r["method"], r["sparsity"]): r for r in comparison["rows"]}
    for (method, sparsity), row in rows.items():
        assert row["error"] is None, (method, row["error"])
        assert abs(row["removed"] - round(sparsity * total)) <= 1
    assert rows[("owl", 0.8)]["allocation"] != rows[("uniform", 0.8)]["allocation"]
    assert rows[("owl", 0.8)]["details"]["M"] == 5.0 and rows[("owl", 0.8)]["details"]["lambda"] == 0.08
    assert rows[("alpha", 0.8)]["details"]["epsilon"] == 0.3
    tuned = rows[("owl-tuned", 0.5)]["details"]
    assert len(tuned["grid"]) == 24 and tuned["default"] == {"M": 5.0, "lambda": 0.08}
    best = max(point["accuracy"] for point in tuned["grid"])
    assert rows[("owl-tuned", 0.5)]["val"]["accuracy"] == best
    assert f"owl-tuned at 0.5: M = {tuned['chosen']['M']:g}, lambda = {tuned['chosen']['lambda']:g} chosen on val " \
           "among 24 settings" in out


def test_sweep_splits_by_owl_under_reconstruction_at_exact_counts(cli, dense, tmp_path):
    code, out, _ = cli("sweep", "--checkpoint", dense, "--allocation", "owl", "--sparsities", "0.6,0.9",
                       "--reconstruct", "mask", "--calibration", "256", "--out", tmp_path, "--device", "cpu")
    assert code == 0, out
    doc = json.loads((tmp_path / "result.json").read_text())
    targets = {t["name"]: t["numel"] for t in doc["sweep"]["targets"]}
    for point in doc["sweep"]["points"][1:]:
        removed = sum(removed_count(s, targets[name]) for name, s in point["allocation"].items())
        assert removed == round(point["sparsity"] * sum(targets.values()))
        assert len(set(point["allocation"].values())) > 1  # not uniform


def test_sweep_over_patterns_prunes_every_layer_n_m(cli, dense, tmp_path):
    code, out, _ = cli("sweep", "--checkpoint", dense, "--pattern", "2:4,1:4,4:8", "--criterion", "wanda", "--out",
                       tmp_path, "--device", "cpu")
    assert code == 0, out
    doc = json.loads((tmp_path / "result.json").read_text())
    points = doc["sweep"]["points"]
    assert [p["pattern"] for p in points] == [None, "2:4", "1:4", "4:8"]
    assert [p["achieved_sparsity"] for p in points] == [0.0, 0.5, 0.75, 0.5]
    assert doc["settings"]["patterns"] == ["2:4", "1:4", "4:8"] and doc["settings"]["sparsities"] == []
    assert "N:M patterns" in out and "(2:4)" in out


@pytest.mark.parametrize(("argv", "expected"), [
    (["sweep", "--pattern", "2:4", "--sparsities", "0.5"], "--pattern fixes every layer"),
    (["sweep", "--pattern", "2:4", "--allocation", "owl"], "--pattern fixes every layer"),
    (["sweep", "--pattern", "4:4"], "pattern 4:4 must keep N of every M weights with 1 ≤ N < M"),
    (["sweep", "--pattern", "0:4"], "1 ≤ N < M"),
    (["sweep", "--pattern", "3:5"], "fc1.weight has input width 64, not a multiple of 5"),
    (["prune", "--pattern", "2:3"], "fc1.weight has input width 64, not a multiple of 3"),
    (["prune", "--pattern", "two:four"], "is not N:M"),
    (["prune"], "give --allocation"),
    (["compare", "--allocations", "owl,best"], "unknown allocation 'best'"),
])
def test_bad_patterns_are_one_line_errors_and_write_nothing(cli, dense, tmp_path, argv, expected):
    out_dir = tmp_path / "out"
    code, out, err = cli(*argv, "--checkpoint", dense, "--out", out_dir, "--device", "cpu")
    assert code == 2 and expected in out + err
    assert len((out + err).strip().splitlines()) == 1
    assert not out_dir.exists()


@pytest.fixture(scope="module")
def two_four(dense, tmp_path_factory):
    """The digits MLP pruned 2:4 by OBS reconstruction and fine-tuned one epoch: its output directory."""
    from prunescope.cli import main

    out = tmp_path_factory.mktemp("two-four")
    with pytest.raises(SystemExit) as done:
        main(["prune", "--checkpoint", str(dense), "--pattern", "2:4", "--reconstruct", "obs", "--finetune-epochs",
              "1", "--out", str(out), "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return out


def test_prune_saves_weights_with_at_most_two_of_every_four(two_four):
    model = load_checkpoint(two_four / "model.pt").model
    for t in find_targets(model):
        nonzero = model.get_submodule(t.module).weight.detach() != 0
        assert (nonzero.reshape(t.shape[0], -1, 4).sum(2) <= 2).all(), t.name
        assert int(nonzero.sum()) <= t.numel // 2
    doc = json.loads((two_four / "result.json").read_text())
    assert doc["settings"]["pattern"] == "2:4" and doc["settings"]["reconstruct"] == "obs"


def test_measure_says_plainly_that_a_cpu_has_no_semi_structured_kernels(cli, two_four, tmp_path):
    code, out, _ = cli("measure", "--checkpoint", two_four / "model.pt", "--device", "cpu", "--repeats", "2",
                       "--batch-sizes", "1", "--json", tmp_path / "measure.json")
    assert code == 0, out
    assert CPU_LINE in " ".join(out.split())
    semi = json.loads((tmp_path / "measure.json").read_text())["semi_structured"]
    assert semi["reason"] == CPU_LINE and semi["speedup"] is None and len(semi["layers"]) == 3


def test_only_2_4_linear_layers_are_offered_to_the_kernels():
    layer = torch.nn.Linear(8, 4)
    assert two_four_linears(torch.nn.Sequential(layer)) == []  # dense
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    model = torch.nn.Sequential(layer, torch.nn.Linear(4, 3))
    assert two_four_linears(model) == ["0"]
    result = semi_structured_speedup(model, (8,), device=torch.device("cpu"))
    assert result["reason"] == CPU_LINE and result["layers"] == ["0"]
    assert semi_structured_speedup(torch.nn.Sequential(torch.nn.Linear(8, 4)), (8,),
                                   device=torch.device("cpu"))["reason"].startswith("no Linear layer is 2:4")
