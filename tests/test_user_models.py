"""The whole command-line workflow on models and data the zoo has never seen (tests/own_models.py).

train → scan → pick → compare → prune with fine-tuning → channel scan → budget pick →
channel prune → export → measure, on each model as far as its layers allow; where channel
pruning is impossible the refusal is one line naming the layer and the reason.
"""

import json
from pathlib import Path

import pytest
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.targets import effective_weight, find_targets

# name: (model, data, extra train arguments, expected channel refusal or None)
CASES = {
    "attention": ("own_models:attention", "own_models:images", [], None),
    "gru": ("own_models:gru", "own_models:tensor_datasets", [],
            "gru: recurrent layer"),
    "depthwise-residual-concat": ("own_models:separable", "own_models:map_style", [], None),
    "grouped": ("own_models:separable", "own_models:images", ["--model-arg", "groups=3"],
                "grouped: grouped convolution"),
    "embedding": ("own_models:bag", "own_models:tokens", ["--model-arg", "vocab=32"], None),
    "tabular": ("mlp", "own_models:features", ["--model-arg", "hidden=16,8"], None),
    "other-keywords": ("own_models:other_names", "own_models:images", ["--model-arg", "width=6"], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_workflow(cli, tmp_path, name):
    model, data, extra, refusal = CASES[name]
    cpu = ("--device", "cpu", "--trust-factory")  # the checkpoints name the factories these tests wrote
    ckpt = tmp_path / "train" / "model.pt"
    code, out, err = cli("train", "--model", model, "--data", data, *extra, "--epochs", "1", "--batch-size", "32",
                         "--out", tmp_path / "train", "--device", "cpu")
    assert code == 0, err
    code, _, err = cli("scan", "--checkpoint", ckpt, "--out", tmp_path / "scan",
                       "--limit-val", "12", *cpu)
    assert code == 0, err
    code, _, err = cli("pick", "--scan", tmp_path / "scan", "--picker", "budget", "--target-sparsity", "0.5",
                       "--limit-val", "12", *cpu)
    assert code == 0, err
    code, _, err = cli("compare", "--checkpoint", ckpt, "--scan", tmp_path / "scan", "--sparsities", "0.5",
                       "--allocations", "ours,global", "--out", tmp_path / "compare", *cpu)
    assert code == 0, err
    code, out, err = cli("prune", "--checkpoint", ckpt, "--allocation", tmp_path / "scan" / "pick.json",
                         "--finetune-epochs", "1", "--optimizer", "adamw", "--lr", "0.001", "--batch-size", "32",
                         "--out", tmp_path / "pruned", *cpu)
    assert code == 0, err
    pick = json.loads((tmp_path / "scan" / "pick.json").read_text())["verified"]["allocation"]
    pruned = load_checkpoint(tmp_path / "pruned" / "model.pt", trust_factory=True).model
    for target in find_targets(pruned):  # exactly round(s · n) zeros survived fine-tuning
        zeros = int((effective_weight(pruned, target) == 0).sum())
        assert zeros >= round(pick[target.name] * target.numel), target.name
    result = json.loads((tmp_path / "pruned" / "result.json").read_text())
    assert result["settings"]["finetune"]["optimizer"] == "adamw"

    code, out, err = cli("scan", "--checkpoint", ckpt, "--granularity", "channel", "--out", tmp_path / "cscan", *cpu)
    if refusal is not None:
        errors = [line for line in err.splitlines() if not line.startswith("--trust-factory: importing")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error:") and refusal in errors[0], err
        return
    assert code == 0, err
    scanned = json.loads((tmp_path / "cscan" / "scan.json").read_text())
    for name, curve in scanned["curves"]["curves"].items():  # whole channels, each count once, members listed
        width = scanned["groups"][name]["width"]
        removed = [round(p["sparsity"] * width) for p in curve["points"]]
        assert [p["sparsity"] for p in curve["points"]] == [k / width for k in removed]
        assert len(set(removed)) == len(removed) and max(removed) < width
        assert f"{name} (out)" in scanned["groups"][name]["members"]
    assert "kept" in out
    code, out, err = cli("pick", "--scan", tmp_path / "cscan", "--picker", "budget", "--target-macs", "0.99", *cpu)
    assert code == 0, err
    assert "kept" in out  # channels kept / total
    code, out, err = cli("prune", "--checkpoint", ckpt, "--allocation", tmp_path / "cscan" / "pick.json",
                         "--granularity", "channel", "--finetune-epochs", "1", "--export", tmp_path / "small.pt2",
                         "--out", tmp_path / "cpruned", *cpu)
    assert code == 0, err
    assert "runs any batch size" in out
    exported = torch.export.load(tmp_path / "small.pt2").module()
    small = load_checkpoint(tmp_path / "cpruned" / "model.pt", trust_factory=True).model
    x = torch.zeros(3, *json.loads((tmp_path / "cpruned" / "result.json").read_text())["model"]["input_shape"])
    with torch.no_grad():
        assert torch.allclose(exported(x), small(x), atol=1e-5)
    code, out, err = cli("measure", "--checkpoint", tmp_path / "cpruned" / "model.pt", "--repeats", "2",
                         "--batch-sizes", "1", "--json", tmp_path / "measure.json", *cpu)
    assert code == 0, err
    # One MAC counter: what pick promised, what prune built and what measure counts agree (attention matmuls too).
    promised = json.loads((tmp_path / "cscan" / "pick.json").read_text())["footprint"]["macs"]
    built = json.loads((tmp_path / "cpruned" / "result.json").read_text())["footprint"]["pruned"]["macs"]
    measured = json.loads((tmp_path / "measure.json").read_text())["model"]["macs"]
    assert promised == built == measured


def test_export_falls_back_to_a_static_batch_and_says_so(cli, tmp_path):
    cpu = ("--device", "cpu", "--trust-factory")  # the checkpoints name the factories these tests wrote
    ckpt = tmp_path / "train" / "model.pt"
    assert cli("train", "--model", "own_models:batch_bound", "--data", "own_models:images", "--epochs", "1",
               "--out", tmp_path / "train", "--device", "cpu")[0] == 0
    code, _, err = cli("scan", "--checkpoint", ckpt, "--granularity", "channel", "--out", tmp_path / "cscan", *cpu)
    # embed's outputs are added to a buffer Torch-Pruning does not see: refused in one line naming it
    errors = [line for line in err.splitlines() if not line.startswith("--trust-factory: importing")]
    assert code == 2 and len(errors) == 1, err
    assert "breaks the model's forward pass (embed: " in errors[0] and "--exclude embed" in errors[0]
    code, _, err = cli("scan", "--checkpoint", ckpt, "--granularity", "channel", "--exclude", "embed", "--out",
                       tmp_path / "cscan", *cpu)
    assert code == 0, err
    (tmp_path / "alloc.json").write_text(json.dumps({"hidden": 0.5}))
    code, out, err = cli("prune", "--checkpoint", ckpt, "--allocation", tmp_path / "alloc.json", "--granularity",
                         "channel", "--finetune-epochs", "0", "--export", tmp_path / "small.pt2", "--out",
                         tmp_path / "pruned", *cpu)
    assert code == 0, err
    assert "runs batches of 1 only: a dynamic batch could not be captured" in out
    assert "fine-tuned" not in out
    doc = json.loads((tmp_path / "pruned" / "result.json").read_text())
    assert doc["export"]["batch"] == 1
    code, out, err = cli("measure", "--checkpoint", tmp_path / "small.pt2", "--trust-export", "--repeats", "2", *cpu)
    assert code == 0, err
    assert "static batch of 1" in out


def test_the_readme_example_file(cli, tmp_path, monkeypatch):
    """examples/my_model.py, as the README shows it: train with a model option, then scan its checkpoint."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    code, _, err = cli("train", "--model", "my_model:build", "--data", "my_model:data", "--model-arg", "width=6",
                       "--data-arg", "n_train=120", "--epochs", "1", "--out", tmp_path / "mine", "--device", "cpu")
    assert code == 0, err
    saved = load_checkpoint(tmp_path / "mine" / "model.pt", trust_factory=True)
    assert saved.model.stem.out_channels == 6 and saved.model_spec["kwargs"] == {"width": 6}
    assert saved.dataset_spec["n_train"] == 120
    code, _, err = cli("scan", "--checkpoint", tmp_path / "mine" / "model.pt", "--trust-factory", "--out",
                       tmp_path / "scan", "--device", "cpu")
    assert code == 0, err


def test_partial_allocation_file(cli, tmp_path):
    """A {layer: sparsity} file naming some layers prunes those; the rest stay dense; unknown names list the known."""
    ckpt = tmp_path / "train" / "model.pt"
    assert cli("train", "--model", "mlp", "--data", "own_models:features", "--epochs", "1", "--out",
               tmp_path / "train", "--device", "cpu")[0] == 0
    (tmp_path / "some.json").write_text(json.dumps({"fc2.weight": 0.5}))
    code, _, err = cli("prune", "--checkpoint", ckpt, "--allocation", tmp_path / "some.json", "--finetune-epochs", "0",
                       "--out", tmp_path / "pruned", "--device", "cpu", "--trust-factory")
    assert code == 0, err
    pruned = load_checkpoint(tmp_path / "pruned" / "model.pt", trust_factory=True).model
    zeros = {t.name: int((effective_weight(pruned, t) == 0).sum()) for t in find_targets(pruned)}
    assert zeros == {"fc1.weight": 0, "fc2.weight": 64 * 128 // 2, "fc3.weight": 0}
    (tmp_path / "bad.json").write_text(json.dumps({"fc9.weight": 0.5}))
    code, _, err = cli("prune", "--checkpoint", ckpt, "--allocation", tmp_path / "bad.json", "--out",
                       tmp_path / "bad", "--device", "cpu", "--trust-factory")
    assert code == 2 and "unknown targets fc9.weight; known: fc1.weight, fc2.weight, fc3.weight" in err
