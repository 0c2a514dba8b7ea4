"""prune, gradual and baseline from the command line."""

import json

import pytest

from prunescope.checkpoint import load_checkpoint
from prunescope.masks import measured_sparsity
from prunescope.targets import find_targets


def test_prune_with_a_bare_allocation_then_scratch_baseline(cli, dense, tmp_path):
    allocation = tmp_path / "pick.json"
    allocation.write_text(json.dumps({"allocation": {"fc1.weight": 0.9, "fc2.weight": 0.8, "fc3.weight": 0.5}}))
    code, out, _ = cli("prune", "--checkpoint", dense, "--allocation", allocation, "--finetune-epochs", "2",
                        "--out", tmp_path / "pruned", "--device", "cpu")
    assert code == 0 and "fine-tuned" in out
    pruned = load_checkpoint(tmp_path / "pruned" / "model.pt").model
    zeros = measured_sparsity(pruned, find_targets(pruned))
    assert round(zeros["fc1.weight"] * 64 * 128) == round(0.9 * 64 * 128)  # exact after fine-tuning
    code, out, _ = cli("baseline", "--checkpoint", tmp_path / "pruned" / "model.pt", "--scratch", "E",
                        "--epochs", "2", "--out", tmp_path / "scratch", "--device", "cpu")
    assert code == 0 and "scratch-E" in out and "training from scratch" in out


def test_gradual_reaches_the_final_sparsity(cli, dense, tmp_path):
    code, out, _ = cli("gradual", "--checkpoint", dense, "--target-sparsity", "0.8", "--steps", "3",
                        "--epochs-per-step", "1", "--out", tmp_path, "--device", "cpu")
    assert code == 0 and "polynomial pruning to 80%" in out
    doc = json.loads((tmp_path / "result.json").read_text())
    steps = doc["gradual"]["steps"]
    assert len(steps) == 3 and steps[-1]["sparsity"] == 0.8
    total = sum(t.numel for t in find_targets(load_checkpoint(dense).model))
    assert round(steps[-1]["achieved_sparsity"] * total) == round(0.8 * total)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (lambda d, t: ["prune", "--checkpoint", d, "--allocation", t / "none.json"], "none.json"),
        (lambda d, t: ["gradual", "--checkpoint", d, "--target-sparsity", "0.5", "--initial-sparsity", "0.7"],
         "ends below its start"),
        (lambda d, t: ["gradual", "--checkpoint", d, "--target-sparsity", "1.2"], "outside [0, 1)"),
        (lambda d, t: ["baseline", "--checkpoint", d, "--scratch", "C"], "--scratch"),
    ],
)
def test_bad_input(cli, dense, tmp_path, argv, expected):
    code, _, err = cli(*argv(dense, tmp_path))
    assert code == 2 and expected in err and "\n" not in err.strip()


def test_pick_for_another_model_is_refused(cli, dense, tmp_path):
    allocation = tmp_path / "pick.json"
    allocation.write_text(json.dumps({"conv1.weight": 0.5}))
    code, _, err = cli("prune", "--checkpoint", dense, "--allocation", allocation, "--out", tmp_path)
    assert code == 2 and "conv1.weight" in err
