"""Cross-validation of the pick on val folds, from the scan's per-example results."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_same_accuracy, fitted, make_dataset, near_ties

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator, paired_drop, subset_indices
from prunescope.pick import retrain as retrain_cv
from prunescope.pick.choose import choose
from prunescope.pick.crossval import cross_validate, thresholds_for, val_folds, with_threshold
from prunescope.pick.pickers import ThresholdPicker
from prunescope.pick.registry import make_allocator
from prunescope.pick.verify import ExampleEvaluator
from prunescope.pipeline import job as pipeline
from prunescope.pipeline.config import RunConfig
from prunescope.scan import scan
from prunescope.scan.evaluation import ModelEvaluation
from prunescope.targets import find_targets
from prunescope.units import WeightPruning

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def trained():
    """TinyNet trained full-batch on 600 synthetic examples; 600 validation examples."""
    data = make_dataset(n_train=600, n_val=600)
    return fitted(data, steps=150, lr=0.02), data


@pytest.fixture(scope="module")
def scanned(trained, tmp_path_factory):
    """A subset scan (150 examples first, grown where undecided) with per-example results, and its journal."""
    model, data = trained
    journal = tmp_path_factory.mktemp("scan") / "scan.journal"
    curves = scan(model, data, strategy="grid", levels=(0.3, 0.6, 0.8, 0.9, 0.95), subset=150, max_subset=600,
                  tolerance=TOLERANCE, storage=journal, device="cpu", seed=3)
    return curves, journal


def _pruning(model):
    targets = find_targets(model)
    return WeightPruning(model, targets, compute_scores(model, targets, "magnitude"))


def _accuracy_alone(model, split, target, sparsity, index):
    """Accuracy of ``model`` with ``target`` alone pruned, evaluated afresh on ``split``'s examples ``index``
    (in one batch), and its logits there."""
    rows = torch.from_numpy(np.asarray(index))
    evaluator = Evaluator(model, Split(split.x[rows], split.y[rows]), device="cpu")
    allocation = {target: sparsity} if sparsity > 0 else {}
    with _pruning(model).applied(allocation):
        return evaluator.evaluate().accuracy, evaluator.logits()


def test_stored_results_reproduce_every_curve_point_and_every_fold_accuracy(trained, scanned):
    model, data = trained
    curves, _ = scanned
    results = curves.per_example
    assert results.missing == 0 and results.size == len(data.val)
    assert len({p.n for c in curves.curves.values() for p in c.points}) > 1  # subsets of several sizes
    for n, index in results.index.items():
        assert np.array_equal(index, subset_indices(len(data.val), n, seed=3))
        assert results.dense[n].mean() == curves.dense_by_n[n].value
    for name, curve in curves.curves.items():
        for p in curve.points:
            assert results.points[(name, p.sparsity, p.n)].mean() == p.value  # exactly, not approximately
            assert p.drop_low <= curves.dense_at(p.n).value - p.value <= p.drop_high

    fold = val_folds(data.val.y.numpy(), 3, seed=1)[0]
    on_fold = curves.on(fold)
    for name, curve in on_fold.curves.items():
        for p in curve.points:
            original = next(q for q in curves.curves[name].points if q.sparsity == p.sparsity)
            examples = np.intersect1d(results.index[original.n], fold)
            assert p.n == len(examples)
            # The scan evaluated these examples among others, in other batches: equal up to a near tie.
            assert_same_accuracy(p.value, *_accuracy_alone(model, data.val, name, p.sparsity, examples))
            dense, logits = _accuracy_alone(model, data.val, name, 0.0, examples)
            assert_same_accuracy(on_fold.dense_at(p.n).value, dense, logits)
            assert p.drop_low <= on_fold.dense_at(p.n).value - p.value <= p.drop_high

    # The results survive scan.json (to_dict / from_dict) and a rerun that reads the journal back.
    assert Curves.from_dict(curves.to_dict()).per_example == results


def test_rerun_reads_the_results_back_and_evaluates_nothing(trained, scanned, monkeypatch):
    model, data = trained
    curves, journal = scanned
    calls = []
    original = ModelEvaluation.__call__
    monkeypatch.setattr(ModelEvaluation, "__call__", lambda self, *a: calls.append(a) or original(self, *a))
    forwards = []
    logits = Evaluator.logits
    monkeypatch.setattr(Evaluator, "logits", lambda self: forwards.append(1) or logits(self))
    again = scan(model, data, strategy="grid", levels=(0.3, 0.6, 0.8, 0.9, 0.95), subset=150, max_subset=600,
                 tolerance=TOLERANCE, storage=journal, device="cpu", seed=3)
    assert calls == [] and forwards == []
    assert again.per_example == curves.per_example and again.curves == curves.curves


def test_a_journal_without_per_example_results_resumes_but_refuses_cross_validation(trained, tmp_path, monkeypatch):
    model, data = trained
    journal = tmp_path / "old.journal"
    original = ModelEvaluation.__call__
    with monkeypatch.context() as patch:  # a prunescope that did not keep per-example results
        patch.setattr(ModelEvaluation, "__call__", lambda self, *a: replace(original(self, *a), correct=None))
        scan(model, data, strategy="grid", levels=(0.5, 0.9), tolerance=TOLERANCE, storage=journal, device="cpu")
    calls = []
    monkeypatch.setattr(ModelEvaluation, "__call__", lambda self, *a: calls.append(a) or original(self, *a))
    resumed = scan(model, data, strategy="grid", levels=(0.5, 0.9), tolerance=TOLERANCE, storage=journal,
                   device="cpu")
    assert calls == []  # nothing evaluated again
    assert resumed.per_example.missing == 2 * len(resumed.curves)
    with pytest.raises(UsageError, match=r"older prunescope.*--folds 0"):
        choose(resumed, make_allocator("threshold"), model, data, device="cpu", folds=3)
    assert choose(resumed, make_allocator("threshold"), model, data, device="cpu", folds=0).crossval is None


def test_held_out_drop_is_measured_on_examples_the_pick_never_saw(trained, scanned):
    model, data = trained
    curves, _ = scanned
    labels = data.val.y.numpy()
    picker = make_allocator("ensemble", max_drop=0.01)
    cv = cross_validate(curves, picker, ExampleEvaluator(_pruning(model), data.val, device="cpu"), labels,
                        bound=0.01, k=3, seed=1)
    for candidate in cv.candidates:
        covered = np.concatenate([f.held_out for f in candidate.folds])
        assert np.array_equal(np.sort(covered), np.arange(len(labels)))  # every val example held out once
        for fold in candidate.folds:
            assert len(np.intersect1d(fold.seen, fold.held_out)) == 0
            assert len(fold.seen) + len(fold.held_out) == len(labels)
            # The held-out drop is that of the fold's verified allocation on the held-out examples, measured afresh.
            held = fold.held_out
            evaluator = Evaluator(model, Split(data.val.x[held], data.val.y[held]), device="cpu")
            evaluator.evaluate()
            dense, ties = evaluator.correct.numpy(), near_ties(evaluator.logits())
            with _pruning(model).applied(fold.allocation):
                evaluator.evaluate()
                ties += near_ties(evaluator.logits())
            # Measured in other batches than here: equal up to an example near a tie of either model (mostly
            # none: then exactly, interval included).
            expected = paired_drop(dense, evaluator.correct.numpy())
            assert abs(fold.held_out_drop[0] - expected[0]) * len(held) <= ties + 1e-9
            if not ties:
                assert fold.held_out_drop == expected

    # Ruin the held-out examples of fold 0 (inputs replaced by noise, stored results flipped): every fold-0 pick
    # and its verification on the seen examples stay the same; only the held-out measurement changes.
    held = cv.candidates[0].folds[0].held_out
    x = data.val.x.clone()
    x[held] = torch.randn(x[held].shape, generator=torch.Generator().manual_seed(0)) * 5
    ruined = replace(curves.per_example, dense=dict(curves.per_example.dense), points=dict(curves.per_example.points))
    for store in (ruined.dense, ruined.points):
        for key, correct in store.items():
            n = key if isinstance(key, int) else key[2]
            flipped = correct.copy()
            at = np.isin(ruined.index[n], held)
            flipped[at] = ~flipped[at]
            store[key] = flipped
    other = cross_validate(replace(curves, per_example=ruined), picker,
                           ExampleEvaluator(_pruning(model), Split(x, data.val.y), device="cpu"), labels,
                           bound=0.01, k=3, seed=1)
    pairs = [(c, next(o for o in other.candidates if o.threshold == c.threshold)) for c in cv.candidates
             if any(o.threshold == c.threshold for o in other.candidates)]  # both stop at the first that holds
    assert pairs
    for before, after in pairs:
        assert after.folds[0].allocation == before.folds[0].allocation
        assert after.folds[0].seen_drop == before.folds[0].seen_drop
    assert any(a.folds[0].held_out_drop != b.folds[0].held_out_drop for a, b in pairs)


def test_the_threshold_chosen_is_the_largest_whose_held_out_drop_holds(trained, scanned):
    model, data = trained
    curves, _ = scanned
    choice = choose(curves, make_allocator("ensemble", max_drop=0.01), model, data, max_drop=0.01, device="cpu",
                    folds=3, seed=1)
    cv = choice.crossval
    every = thresholds_for(make_allocator("ensemble"), 0.01)
    # Evaluated from the largest down to the first that holds (or all of them, the smallest taken).
    assert [c.threshold for c in cv.candidates] == [t for t in every if t >= cv.chosen.threshold]
    assert all(c.held_out[0] > 0.01 for c in cv.candidates[1:])
    assert cv.chosen is cv.candidates[0] and (cv.holds or cv.chosen.threshold == every[0])
    # The pick on the whole of val is the picker at that threshold, verified to it.
    tuned = with_threshold(make_allocator("ensemble", max_drop=0.01), cv.chosen.threshold)
    assert choice.pick.allocation == tuned.pick(curves).allocation
    assert choice.bound == cv.chosen.threshold and cv.bound == 0.01
    assert choice.verified.measured_drop <= cv.chosen.threshold or not choice.verified.within_bound
    for fold in cv.chosen.folds:  # each fold's pick was verified to the same allowance on its seen examples
        assert fold.seen_drop <= cv.chosen.threshold or all(s == 0 for s in fold.allocation.values())
    doc = choice.to_dict()["crossval"]
    assert doc["threshold"] == cv.chosen.threshold and doc["k"] == 3
    assert doc["held_out_mean"] == pytest.approx(np.mean([f.held_out_drop[0] for f in cv.chosen.folds]))


def test_example_evaluator_evaluates_each_example_of_an_allocation_once(trained, monkeypatch):
    model, data = trained
    sizes = []
    evaluate = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self: sizes.append(len(self)) or evaluate(self))
    joint = ExampleEvaluator(_pruning(model), data.val, device="cpu")
    allocation = {"fc1.weight": 0.9}
    first = joint.correct(allocation, np.arange(0, 400))
    second = joint.correct(allocation, np.arange(200, 600))
    assert sizes == [400, 200] and joint.evaluated == 600
    assert np.array_equal(first[200:], second[:200])
    # Evaluated in two batches (400, 200) against one of 600: equal up to a near tie.
    assert_same_accuracy(joint.accuracy(allocation, np.arange(600)),
                         *_accuracy_alone(model, data.val, "fc1.weight", 0.9, np.arange(600)))


def test_budget_picks_are_cross_validated_as_they_are(trained, scanned):
    model, data = trained
    curves, _ = scanned
    choice = choose(curves, make_allocator("budget", target_sparsity=0.5), model, data, device="cpu", folds=3)
    assert [c.threshold for c in choice.crossval.candidates] == [None]
    assert choice.to_dict()["crossval"]["bound"] is None


def test_with_threshold_and_bad_folds(trained):
    ensemble = with_threshold(make_allocator("ensemble", max_drop=0.005), 0.02)
    assert [getattr(m, "max_drop", getattr(m, "fallback_max_drop", None)) for m in ensemble.members] == [0.02, 0.02]
    assert with_threshold(ThresholdPicker.sconce(), 0.01).levels is not None  # a preset keeps its rule
    _, data = trained
    labels = data.val.y.numpy()
    folds = val_folds(labels, 4, seed=2)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(labels)))
    assert all(np.ptp(np.bincount(labels[f])) <= 1 for f in folds)  # stratified
    with pytest.raises(UsageError, match="at least 2 folds"):
        val_folds(labels, 1)
    with pytest.raises(UsageError, match="of every class"):
        val_folds(labels, 1000)


def test_run_cross_validates_the_pick_on_val_folds_by_default(tmp_path):
    config = RunConfig(epochs=3, finetune_epochs=1, sparsity=0.8, sparsities=(0.8,), methods=("ours",), scratch=(),
                       device="cpu")
    assert (config.folds, config.cv) == (None, "val")  # settled by the data: 3 for a classifier
    doc = pipeline.run(config, tmp_path)
    assert doc["settings"]["folds"] == 3
    crossval = doc["pick"]["crossval"]
    assert crossval["mode"] == "val" and crossval["k"] == 3 and doc["pick"]["bound"] == crossval["threshold"]
    assert any("cross-validated on 3 val folds: held-out drop" in sentence for sentence in doc["verdict"])
    assert doc["scan"]["curves"]["per_example"] is None  # kept in scan/scan.json, not in result.json
    saved = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert Curves.from_dict(saved["curves"]).per_example.missing == 0


def test_retrain_cross_validation_fits_and_scans_a_model_per_train_fold(tmp_path):
    data = make_dataset(n_train=240, n_val=120)
    fits, scans = [], []

    def fit(fold_data, directory):
        fits.append(fold_data)
        return fitted(fold_data, steps=30, lr=0.05)

    def scan_(model, fold_data, directory):
        scans.append(fold_data)
        return scan(model, fold_data, strategy="grid", levels=(0.5, 0.9), device="cpu")

    cv = retrain_cv.retrain_cross_validate(data, fit, scan_, tmp_path, max_drop=0.02, k=2, device="cpu")
    assert cv.mode == "retrain" and len(fits) == 2
    train_rows = {tuple(r) for r in data.train.x.flatten(1).tolist()}
    for fitted_on, scanned_on in zip(fits, scans, strict=True):
        assert fitted_on.val is data.val  # its training history reads val, the real one
        trained = {tuple(r) for r in fitted_on.train.x.flatten(1).tolist()}
        scanned = {tuple(r) for r in scanned_on.val.x.flatten(1).tolist()}
        assert not trained & scanned and trained | scanned == train_rows  # scanned on the fold it did not train on
    for candidate in cv.candidates:
        assert [len(f.held_out) for f in candidate.folds] == [len(data.val)] * 2  # measured on val, never trained on
    assert cv.chosen.threshold in thresholds_for(make_allocator("ensemble"), 0.02)


@pytest.mark.slow
def test_run_cv_retrain_trains_and_scans_one_model_per_train_fold(tmp_path, monkeypatch):
    seen = []
    original = retrain_cv.retrain_cross_validate

    def spying(data, fit, scan_, out, **kwargs):
        def fitting(fold_data, directory):
            seen.append((fold_data, directory))
            return fit(fold_data, directory)

        return original(data, fitting, scan_, out, **kwargs)

    monkeypatch.setattr(pipeline, "retrain_cross_validate", spying)
    config = RunConfig(epochs=2, folds=2, cv="retrain", finetune_epochs=1, sparsity=0.8, sparsities=(0.8,),
                       methods=("ours",), scratch=(), device="cpu")
    data = load_dataset("digits", seed=0)
    doc = pipeline.run(config, tmp_path)
    crossval = doc["pick"]["crossval"]
    assert crossval["mode"] == "retrain" and crossval["k"] == 2 and len(seen) == 2
    trained_on = [fold_data.train for fold_data, _ in seen]
    assert sum(len(s) for s in trained_on) == len(data.train)  # k - 1 = 1 fold each: the two folds
    for fold_data, directory in seen:
        assert len(fold_data.train) < len(data.train) and len(fold_data.val) == len(data.val)
        assert (directory / "model.pt").is_file() and (directory / "scan" / "study.journal").is_file()
    for candidate in crossval["candidates"]:
        assert all(f["held_out_examples"] == len(data.val) for f in candidate["folds"])  # measured on val
    with pytest.raises(UsageError, match="unknown cv"):
        pipeline.run(RunConfig(cv="bootstrap", device="cpu"), tmp_path / "other")
