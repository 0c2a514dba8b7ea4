"""Language models: token-level loss and perplexity, text data, tolerances on perplexity, LLM defaults, the commands."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from prunescope.data import load_dataset
from prunescope.data.text import blocks, load_tokenizer
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, prediction_loss
from prunescope.models import build_model
from prunescope.scores import Score, default_metric
from prunescope.targets import chosen_targets, find_targets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shared_scan import load, states_by_point


class FixedLogits(nn.Module):
    """Logits that depend only on the input token: next-token probabilities chosen per token."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens]


def test_perplexity_is_exp_of_the_mean_token_loss_not_a_mean_of_sequence_perplexities():
    # Vocabulary of 2. After token 0 the model gives p(1) = 0.8; after token 1, p(0) = 0.6 and p(1) = 0.4.
    table = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    x = torch.tensor([[0, 0], [1, 1]])
    y = torch.tensor([[1, 1], [0, 1]])  # sequence 1: p = 0.8, 0.8; sequence 2: p = 0.6, then 0.4 (predicted 0: wrong)
    metrics = Evaluator(FixedLogits(table), Split(x, y), device="cpu").evaluate()
    mean_loss = -(2 * math.log(0.8) + math.log(0.6) + math.log(0.4)) / 4
    assert metrics.loss == pytest.approx(mean_loss, rel=1e-6)
    assert metrics.get("perplexity") == pytest.approx(math.exp(mean_loss), rel=1e-6)
    per_sequence = (1 / 0.8 + math.exp(-(math.log(0.6) + math.log(0.4)) / 2)) / 2
    assert abs(metrics.get("perplexity") - per_sequence) > 1e-3  # not the mean of the sequences' perplexities
    assert metrics.accuracy == 0.75 and metrics.extra["tokens"] == 4 and metrics.n == 2
    assert metrics.score("perplexity") == pytest.approx(-mean_loss, rel=1e-6)
    assert metrics.macro_f1 is None


def test_token_evaluation_in_small_batches_equals_one_batch():
    torch.manual_seed(0)
    model = build_model("gpt", (12,), 30, width=16, layers=1, heads=2).eval()
    split = Split(torch.randint(0, 30, (9, 12)), torch.randint(0, 30, (9, 12)))
    whole = Evaluator(model, split, device="cpu").evaluate()
    pieces = Evaluator(model, split, device="cpu", batch_size=2).evaluate()
    # Other batch sizes take other float paths: equal up to rounding.
    assert pieces.loss == pytest.approx(whole.loss, rel=1e-5)
    assert pieces.accuracy == whole.accuracy or abs(pieces.accuracy - whole.accuracy) <= 2 / 108


def test_prediction_loss_reads_classes_and_tokens_alike():
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    torch.testing.assert_close(prediction_loss(logits, labels),
                               nn.functional.cross_entropy(logits.permute(0, 2, 1), labels))
    flat = torch.randn(4, 7)
    torch.testing.assert_close(prediction_loss(flat, labels[0, :4]), nn.functional.cross_entropy(flat, labels[0, :4]))


def test_a_tolerance_on_perplexity_is_a_relative_increase():
    score = Score("perplexity")
    assert score.allowed(0.05) == pytest.approx(math.log(1.05))
    assert score.tolerance(score.allowed(0.05)) == pytest.approx(0.05)
    assert score.allowed_or_default(None) == pytest.approx(math.log(1.05))  # 5% by default
    assert score.shown(-math.log(20.0)) == pytest.approx(20.0)
    assert score.drop_text(math.log(1.031)) == "+3.10% perplexity"
    accuracy = Score("accuracy")
    assert accuracy.allowed(0.005) == 0.005 and accuracy.allowed_or_default(None) == 0.005
    assert accuracy.drop_text(0.0052) == "+0.52 pts"


def _documents(folder: Path, count: int = 6, length: int = 300) -> None:
    """Document i is the letter chr(65 + i) repeated: a token's value tells which document it came from."""
    folder.mkdir()
    for i in range(count):
        (folder / f"doc{i}.txt").write_text(chr(65 + i) * length)


def test_text_is_split_by_document_and_cut_into_next_token_blocks(tmp_path):
    _documents(tmp_path / "docs")
    data = load_dataset(f"text:{tmp_path / 'docs'}", block=16, val_fraction=0.2, test_fraction=0.2)
    seen = {name: set(data.split(name).x.unique().tolist()) for name in ("train", "val", "test")}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    assert set().union(*seen.values()) <= {65 + i for i in range(6)}
    for split in (data.train, data.val, data.test):
        assert split.x.shape[1] == 16 and split.x.dtype == torch.int64
        assert torch.equal(split.y[:, :-1], split.x[:, 1:])  # the next token at every position
    assert data.input_shape == (16,) and data.num_classes == 256 and data.vocabulary == 256
    assert default_metric(data.val) == "perplexity"
    again = load_dataset(data.spec["name"], **{k: v for k, v in data.spec.items() if k != "name"})
    assert torch.equal(again.train.x, data.train.x)  # the spec rebuilds the same dataset


def test_blocks_take_every_token_once_and_drop_only_the_tail():
    tokenizer = load_tokenizer("bytes")
    split = blocks(["abcdefghij"], tokenizer, 3, "test")
    assert split.x.tolist() == [[97, 98, 99], [100, 101, 102], [103, 104, 105]]
    assert split.y.tolist() == [[98, 99, 100], [101, 102, 103], [104, 105, 106]]


def test_bad_text_inputs_are_one_line_errors(tmp_path):
    _documents(tmp_path / "docs", length=20)
    with pytest.raises(UsageError, match="fewer than one block of 64"):
        load_dataset(f"text:{tmp_path / 'docs'}", block=64)
    with pytest.raises(UsageError, match="is not a directory: give a local tokenizer folder"):
        load_dataset(f"text:{tmp_path / 'docs'}", block=4, tokenizer=str(tmp_path / "no-such-tokenizer"))
    (tmp_path / "two.txt").write_text("one document\n\nand another")
    with pytest.raises(UsageError, match="2 documents cannot be split"):
        load_dataset(f"text:{tmp_path / 'two.txt'}", block=2)
    with pytest.raises(UsageError, match="neither a file nor a folder"):
        load_dataset(f"text:{tmp_path / 'missing'}")
    with pytest.raises(UsageError, match="unknown option"):
        load_dataset(f"text:{tmp_path / 'docs'}", blocks=4)


def test_a_local_tokenizer_folder_is_read_without_transformers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    words = ["alpha", "beta", "gamma", "delta"]
    vocabulary = {"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.vocab_size == 6 and loaded.eos == 1
    assert blocks(["alpha beta", "gamma delta"], loaded, 2, "t").x.tolist() == [[2, 3], [1, 4]]


def test_language_models_leave_embeddings_and_the_output_layer_dense_unless_asked():
    model = build_model("gpt", (8,), 40, width=16, layers=2, heads=2)
    everything = [t.name for t in find_targets(model)]
    chosen, left = chosen_targets(model, 40)
    assert left == {"embed.weight": "an embedding", "head.weight": "the output layer"}
    assert [t.name for t in chosen] == [name for name in everything if name not in left]
    assert [t.name for t in chosen_targets(model, None)[0]] == everything  # not a language model: all of them
    asked, none_left = chosen_targets(model, 40, include=["head*", "blocks.*"])
    assert "head.weight" in [t.name for t in asked] and none_left == {}


def test_hf_language_models_refuse_blocks_longer_than_their_positions(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=256,
                                      max_position_embeddings=8, architectures=["LlamaForCausalLM"])
    config.save_pretrained(tmp_path / "llama")
    with pytest.raises(UsageError, match="8 positions, fewer than the data's blocks of 16"):
        build_model(f"hf:{tmp_path / 'llama'}", (16,), 256)
    with pytest.raises(UsageError, match="300 token ids but"):
        build_model(f"hf:{tmp_path / 'llama'}", (8,), 300)
    assert build_model(f"hf:{tmp_path / 'llama'}", (8,), 256)(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 256)


@pytest.fixture(scope="module")
def language_model(tmp_path_factory) -> Path:
    """A gpt trained for one epoch on 12 files of the standard library's own sources (bytes, blocks of 32)."""
    out = tmp_path_factory.mktemp("lm") / "dense"
    _cli("train", "--model", "gpt", "--model-arg", "width=32", "--model-arg", "layers=2", "--data", "python-source",
         "--data-arg", "max_documents=12", "--data-arg", "block=32", "--limit-train", "400", "--limit-val", "48",
         "--epochs", "1", "--optimizer", "adamw", "--lr", "0.003", "--out", str(out))
    return out / "model.pt"


def _cli(*argv: str, timeout: int = 300) -> str:
    """``python -m prunescope ARGV`` in a subprocess: its output, after checking it exited 0 without a traceback."""
    done = subprocess.run([sys.executable, "-m", "prunescope", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    return output


def test_a_language_model_is_scanned_picked_compared_and_pruned_on_perplexity(language_model, tmp_path):
    common = ["--limit-val", "48", "--device", "auto"]
    scanned = _cli("scan", "--checkpoint", str(language_model), "--out", str(tmp_path / "scan"),
                   "--criterion", "wanda", "--tolerance", "10", *common)
    assert "val perplexity at most 10.00% above dense" in scanned
    assert "embed.weight, head.weight), left dense as LLM pruning does" in scanned
    curves = json.loads((tmp_path / "scan" / "scan.json").read_text())["curves"]
    assert curves["metric"] == "perplexity" and set(curves["curves"]).isdisjoint({"embed.weight", "head.weight"})
    picked = _cli("pick", "--scan", str(tmp_path / "scan"), "--picker", "budget", "--target-sparsity", "0.5", *common)
    assert "% perplexity" in picked
    compared = _cli("compare", "--checkpoint", str(language_model), "--scan", str(tmp_path / "scan"),
                    "--sparsities", "0.5", "--allocations", "ours,uniform,owl,alpha,alpha-tuned",
                    "--criterion", "wanda",
                    "--out", str(tmp_path / "compare"), *common)
    assert "one-shot perplexity" in compared
    rows = json.loads((tmp_path / "compare" / "result.json").read_text())["comparison"]["rows"]
    assert {r["method"] for r in rows} == {"ours", "uniform", "owl", "alpha", "alpha-tuned"}
    assert all(r["error"] is None and r["val"]["extra"]["perplexity"] > 1 for r in rows)
    tuned = next(r for r in rows if r["method"] == "alpha-tuned")
    # Chosen on val as the lowest perplexity of its grid (perplexity is lower-is-better).
    assert tuned["val"]["extra"]["perplexity"] == min(point["perplexity"] for point in tuned["details"]["grid"])
    swept = _cli("sweep", "--checkpoint", str(language_model), "--pattern", "2:4", "--criterion", "wanda",
                 "--out", str(tmp_path / "sweep"), *common)
    assert "perplexity" in swept
    _cli("prune", "--checkpoint", str(language_model), "--pattern", "2:4", "--finetune-epochs", "0",
         "--out", str(tmp_path / "pruned"), *common)
    allocation = json.loads((tmp_path / "pruned" / "result.json").read_text())["allocation"]
    assert allocation["embed.weight"] == 0 and allocation["head.weight"] == 0
    assert {s for name, s in allocation.items() if name.startswith("blocks.")} == {0.5}


SLOW_SCAN = """
import sys, time
from prunescope.scan.evaluation import ModelEvaluation
evaluate = ModelEvaluation.__call__
def slowly(self, target, sparsity, n):
    time.sleep(0.3)
    return evaluate(self, target, sparsity, n)
ModelEvaluation.__call__ = slowly
from prunescope.cli import main
main(sys.argv[1:])
"""


def test_a_killed_language_model_scan_resumes_without_repeating_an_evaluation(language_model, tmp_path):
    out = tmp_path / "scan"
    argv = [sys.executable, "-c", SLOW_SCAN, "scan", "--checkpoint", str(language_model), "--out", str(out),
            "--strategy", "grid", "--limit-val", "16", "--include", "blocks.0.*", "--device", "cpu"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal, deadline, done = out / "study.journal", time.time() + 240, 0
    while done < 4:
        assert process.poll() is None and time.time() < deadline, "the scan ended before it could be killed"
        time.sleep(0.2)
        if journal.exists():
            try:
                done = sum(counts[s] for counts in states_by_point(load(journal, "scan")).values()
                           for s in counts if s.name == "COMPLETE")
            except (KeyError, ValueError):
                done = 0  # the study or a record is still being written
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = done
    resumed = _cli("scan", "--checkpoint", str(language_model), "--out", str(out), "--strategy", "grid",
                   "--limit-val", "16", "--include", "blocks.0.*", "--device", "cpu")
    states = states_by_point(load(journal, "scan"))
    complete = {p: c for p, c in states.items() if any(s.name == "COMPLETE" for s in c)}
    assert all(sum(n for s, n in c.items() if s.name == "COMPLETE") == 1 for c in complete.values())
    reused = int(resumed.split(" evaluations (")[1].split(" reused")[0])
    assert reused >= finished_before  # what finished before the kill is read back, not evaluated again
    assert (out / "scan.json").exists()
