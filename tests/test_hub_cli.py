"""The command line on tiny Hugging Face classifiers over token sequences: train → scan → compare, the prunable
share said and recorded, GPT-2's Conv1D layers pruned, a Llama reconstructed; bad --model hf: input in one line."""

from __future__ import annotations

import json

import pytest
import tiny_hf
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.targets import find_targets

pytest.importorskip("transformers")

DATA = ["--data", "tiny_hf:tokens"]
CONV1D = [f"transformer.h.{i}.{layer}.weight" for i in range(2)
          for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    from prunescope.cli import main

    root = tmp_path_factory.mktemp("gpt2-cli")
    directory = tiny_hf.save("GPT2ForSequenceClassification", tiny_hf.gpt2_config(), root / "gpt2")
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", f"hf:{directory}", *DATA, "--epochs", "6", "--optimizer", "adamw", "--lr", "0.01",
              "--batch-size", "32", "--weight-decay", "0", "--out", str(root / "train"), "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return root / "train" / "model.pt"


def test_trained_gpt2_learns_the_tokens_and_keeps_its_names(gpt2_checkpoint):
    saved = load_checkpoint(gpt2_checkpoint, trust_factory=["tiny_hf:tokens"])  # the data's factory only
    assert saved.model_spec["name"].startswith("hf:/")
    data = tiny_hf.tokens()
    x, y = data["val"]
    accuracy = float((saved.model(x.float()).argmax(1) == y).float().mean())
    assert accuracy > 0.8  # 3 classes: chance is 1/3
    assert set(CONV1D) <= {t.name for t in find_targets(saved.model)}


def test_scan_and_compare_prune_the_conv1d_layers_and_say_the_prunable_share(cli, gpt2_checkpoint, tmp_path):
    model = load_checkpoint(gpt2_checkpoint, trust_factory=["tiny_hf:tokens"]).model
    total = sum(p.numel() for p in model.parameters())
    in_targets = sum(t.numel for t in find_targets(model))
    code, out, err = cli("scan", "--checkpoint", gpt2_checkpoint, "--out", tmp_path / "scan", "--strategy", "grid",
                         "--device", "cpu", "--trust-factory")
    assert code == 0, err
    line = f"prunable: {in_targets / total:.1%} of the model's {total:,} weights (11 layers)"
    assert line in out and "warning: only" not in out
    scan = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert scan["prunable"]["prunable"] == in_targets and scan["prunable"]["total"] == total
    assert set(CONV1D) <= set(scan["curves"]["curves"])

    code, out, err = cli("compare", "--checkpoint", gpt2_checkpoint, "--sparsities", "0.5,0.7", "--allocations",
                         "uniform,global", "--out", tmp_path / "compare", "--device", "cpu", "--no-test",
                         "--trust-factory")
    assert code == 0, err
    assert line in out
    result = json.loads((tmp_path / "compare" / "result.json").read_text())
    assert result["prunable"]["share"] == pytest.approx(in_targets / total)
    comparison = result["comparison"]
    assert comparison["weights"] == in_targets  # the Conv1D weights are among what is pruned
    for row in comparison["rows"]:
        assert abs(row["removed"] - round(row["sparsity"] * in_targets)) <= len(row["allocation"])
        if row["method"] == "uniform":
            assert all(row["allocation"][name] == pytest.approx(row["sparsity"], abs=0.005) for name in CONV1D)
    dense = comparison["dense_val"]["accuracy"]
    assert min(row["val"]["accuracy"] for row in comparison["rows"] if row["sparsity"] == 0.7) < dense


def test_exclude_leaving_most_of_the_model_warns(cli, gpt2_checkpoint, tmp_path):
    code, out, err = cli("sweep", "--checkpoint", gpt2_checkpoint, "--sparsities", "0.5", "--exclude",
                         "transformer.h.*", "--out", tmp_path, "--device", "cpu", "--trust-factory")
    assert code == 0, err
    assert "warning: only" in out and "in layers left out by --include/--exclude" in out
    assert json.loads((tmp_path / "result.json").read_text())["prunable"]["excluded"][:1] == [CONV1D[0]]


def test_llama_reconstructed_through_the_command_line(cli, tmp_path):
    directory = tiny_hf.save("LlamaForSequenceClassification", tiny_hf.llama_config(), tmp_path / "llama")
    code, _, err = cli("train", "--model", f"hf:{directory}", *DATA, "--epochs", "1", "--optimizer", "adamw",
                       "--lr", "0.01", "--out", tmp_path / "train", "--device", "cpu")
    assert code == 0, err
    checkpoint = tmp_path / "train" / "model.pt"
    code, _, err = cli("compare", "--checkpoint", checkpoint, "--sparsities", "0.5", "--allocations", "uniform",
                       "--reconstruct", "mask", "--calibration", "64", "--out", tmp_path / "refused", "--device", "cpu",
                         "--trust-factory")
    error = err.strip().splitlines()[-1]  # after the line saying the data's factory is imported
    assert code == 2 and error.startswith("error: cannot capture the inputs of model.embed_tokens.weight")
    code, out, err = cli("compare", "--checkpoint", checkpoint, "--sparsities", "0.5", "--allocations", "uniform",
                         "--reconstruct", "mask", "--calibration", "64", "--exclude", "model.embed_tokens",
                         "--out", tmp_path / "compare", "--device", "cpu", "--no-test", "--trust-factory")
    assert code == 0, err
    assert "prunable:" in out and "in layers left out by --include/--exclude (model.embed_tokens.weight)" in out
    rows = json.loads((tmp_path / "compare" / "result.json").read_text())["comparison"]["rows"]
    assert rows[0]["error"] is None and "model.layers.1.mlp.down_proj.weight" in rows[0]["allocation"]


def test_bad_hf_model_is_one_line_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an earlier run")
    empty = tmp_path / "empty"
    empty.mkdir()
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pt")
    directory = tiny_hf.save("GPT2ForSequenceClassification", tiny_hf.gpt2_config(), tmp_path / "gpt2")
    cases = [
        (["--model", f"hf:{empty}"], "has no config.json"),
        (["--model", f"hf:{directory}", "--weights", tmp_path / "w.pt"], "does not fit the model: 'transformer.wte"),
        (["--model", f"hf:{directory}", "--weights", tmp_path / "absent.pt"], "does not exist"),
    ]
    for options, expected in cases:
        code, _, err = cli("train", *options, *DATA, "--epochs", "1", "--out", out, "--device", "cpu")
        assert code == 2 and expected in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]
    assert (out / "model.pt").read_bytes() == b"an earlier run"
