"""``prunescope run`` on a language model: every stage decides on perplexity, and says so.

The run is the command a user types: a small GPT trained here on the standard library's own sources
(bytes, blocks of 32), then scan, pick, one-shot comparison (with OWL and AlphaPruning, Wanda masks,
reconstruction), fine-tuning, test once, report; the scratch baseline and the recovered sweep in a slow test.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunescope.data import load_dataset
from prunescope.errors import UsageError
from prunescope.pipeline.config import RunConfig
from prunescope.pipeline.job import LANGUAGE_MODEL_METHODS, RUN_METHODS, settled

DATA = ["--data", "python-source", "--data-arg", "max_documents=12", "--data-arg", "block=32",
        "--limit-train", "400", "--limit-val", "48"]
MODEL = ["--model", "gpt", "--model-arg", "width=32", "--model-arg", "layers=2"]
# A short run: three methods (the defaults a language model settles on are checked without training, below),
# 16 calibration sequences, no scratch baseline and no recovered sweep; those run in the slow test at the end.
METHODS = ("ours", "uniform", "owl")
SETTINGS = ('calibration = 16\nscratch = []\nrecovered = false\n'
            f"methods = {list(METHODS)!r}\n".replace("'", '"'))
# The slow run adds scratch-E and a recovered sweep of two sparsities that bracket the bound (fine-tuning at a
# learning rate too small to move far, so that 99% stays outside it), bisected at most four times.
FULL_SETTINGS = ('calibration = 16\nscratch = ["E"]\nrecovered_sparsities = [0.5, 0.99]\nfinetune_lr = 1e-5\n'
                 f"methods = {list(METHODS)!r}\n".replace("'", '"'))


def _run(out: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunescope", "run", *DATA, *MODEL, "--epochs", "4", "--optimizer", "adamw",
         "--lr", "0.01", "--sparsity", "0.5", "--sparsities", "0.5", "--finetune-epochs", "1",
         "--config", str(config), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "COLUMNS": "200"})


def _finished_run(root: Path, settings: str) -> tuple[Path, str]:
    config = root / "run.toml"
    config.write_text(settings)
    done = _run(root / "out", config)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    return root / "out", output


@pytest.fixture(scope="module")
def language_model_run(tmp_path_factory) -> tuple[Path, str]:
    return _finished_run(tmp_path_factory.mktemp("lm-run"), SETTINGS)


def test_a_language_model_run_settles_on_llm_practice_and_perplexity(language_model_run):
    out, output = language_model_run
    doc = json.loads((out / "result.json").read_text())
    assert doc["metric"] == "perplexity"
    settings = doc["settings"]
    assert settings["criterion"] == "wanda" and settings["folds"] == 0
    assert tuple(settings["methods"]) == METHODS
    assert settings["tolerance"] == settings["max_drop"] == 0.05  # 5% more perplexity, in the user's unit
    assert doc["scan"]["tolerance"] == pytest.approx(math.log(1.05))  # the score drop the scan bounds
    # The embeddings and the output layer stay dense: no method's allocation names them.
    assert doc["prunable"]["left_dense"] == ["embed.weight", "head.weight"]
    for method in doc["methods"]:
        assert method["error"] is None and not {"embed.weight", "head.weight"} & set(method["allocation"])
    assert set(doc["scan"]["curves"]["curves"]).isdisjoint({"embed.weight", "head.weight"})
    # Perplexity is exp of the mean token loss wherever a model is evaluated.
    for entry in (doc["dense"], *doc["methods"]):
        for split in ("val", "test"):
            assert entry[split]["extra"]["perplexity"] == pytest.approx(math.exp(entry[split]["loss"]), rel=1e-9)
    assert "left dense as LLM pruning does: embed.weight, head.weight" in output
    assert "val ppl" in output and "test ppl" in output  # the final table's columns


def test_every_method_is_compared_at_exactly_the_asked_sparsity(language_model_run):
    out, _ = language_model_run
    doc = json.loads((out / "result.json").read_text())
    sizes = {name: curve["numel"] for name, curve in doc["scan"]["curves"]["curves"].items()}
    total = sum(sizes.values())
    for method in doc["methods"]:
        removed = sum(round(s * sizes[name]) for name, s in method["allocation"].items())
        assert abs(removed - 0.5 * total) <= len(sizes), method["method"]  # one weight of rounding per layer


def test_the_verdict_and_the_files_speak_of_perplexity(language_model_run):
    out, _ = language_model_run
    doc = json.loads((out / "result.json").read_text())
    verdict = " ".join(doc["verdict"])
    assert "% perplexity" in verdict and " pts" not in verdict
    assert "test perplexity (dense" in verdict
    with open(out / "methods.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == set(METHODS)
    by_method = {m["method"]: m for m in doc["methods"]}
    for row in rows:
        assert float(row["test_perplexity"]) == pytest.approx(by_method[row["method"]]["test"]["extra"]["perplexity"])
        assert "test_macro_f1" not in row  # a language model has no classes to average over
    page = (out / "report.html").read_text()
    assert "val ppl" in page and "accuracy points" not in page and "plot not drawn" not in page


@pytest.mark.slow
def test_the_recovered_sweep_bounds_log_perplexity_and_picks_the_lowest_perplexity_baseline(tmp_path):
    out, _ = _finished_run(tmp_path, FULL_SETTINGS)
    doc = json.loads((out / "result.json").read_text())
    recovered = doc["recovered"]
    assert recovered["metric"] == "perplexity"
    # The baseline fine-tuned beside ours is the one of lowest val perplexity among the others.
    others = [m for m in doc["methods"] if m["method"] != "ours"]
    assert recovered["baseline"] == min(others, key=lambda m: m["val"]["extra"]["perplexity"])["method"]
    # Scores are minus log-perplexity; within the bound means at most 5% above the dense val perplexity.
    reach = recovered["reach"]
    dense_ppl = math.exp(-recovered["dense_val"])
    assert dense_ppl == pytest.approx(doc["dense"]["val"]["extra"]["perplexity"], rel=1e-9)
    for point in reach["points"]:
        within = math.exp(-point["score"]) <= dense_ppl * 1.05 * (1 + 1e-12)
        assert within == (point["score"] >= reach["dense"] - reach["max_drop"])
    assert 0.5 <= recovered["answer"] < 0.99  # bracketed by the two sparsities given
    assert recovered["test"]["extra"]["perplexity"] > 1 and recovered["gradual"]["error"] is None
    (scratch,) = doc["scratch"]
    assert scratch["mode"] == "E" and scratch["test"]["extra"]["perplexity"] > 1
    assert any(sentence.startswith("fine-tuning ours") and "test perplexity" in sentence for sentence in doc["verdict"])


def _text(tmp_path: Path) -> Path:
    """Six documents (paragraphs), enough for train, val and test by document."""
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"document {i}: " + "some words " * 40 for i in range(6)))
    return tmp_path / "corpus.txt"


def test_settled_fills_only_what_the_user_left_to_the_data(tmp_path):
    language = load_dataset(f"text:{_text(tmp_path)}", block=16)
    lm = settled(RunConfig(), language)
    assert (lm.criterion, lm.methods, lm.folds, lm.tolerance, lm.max_drop) == ("wanda", LANGUAGE_MODEL_METHODS, 0,
                                                                               0.05, 0.05)
    given = settled(RunConfig(criterion="magnitude", methods=("ours", "owl"), max_drop=0.1), language)
    assert (given.criterion, given.methods, given.max_drop) == ("magnitude", ("ours", "owl"), 0.1)
    digits = settled(RunConfig(), load_dataset("digits"))
    assert (digits.criterion, digits.methods, digits.folds, digits.tolerance) == ("magnitude", RUN_METHODS, 3, 0.005)
    with pytest.raises(UsageError, match="use --folds 0"):
        settled(RunConfig(folds=3), language)


def test_folds_asked_of_a_language_model_run_are_refused_before_training(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(SETTINGS)
    done = _run(tmp_path / "out", config, "--folds", "3")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    assert "use --folds 0" in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "model.pt").exists()
