"""Sensitivity scan: planners on synthetic curves, the runner's subset growth, the study (resume,
identity, workers) and scans of a small trained network against independent evaluations."""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Callable

import optuna
import pytest
import torch
from conftest import TinyNet, assert_same_accuracy, assert_same_curves, fitted, make_dataset, scan_near_ties

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks, removed_count
from prunescope.scan import SCONCE_LEVELS, STRATEGIES, auto_subset, scan
from prunescope.scan.evaluation import ModelEvaluation
from prunescope.scan.executors import InProcess
from prunescope.scan.runner import Ladder, Runner, ScanOutcome, paired_drop_interval
from prunescope.scan.strategy import BEYOND_LEVELS, Adaptive, Grid, Planner, within
from prunescope.scan.study import DENSE, Measurement, Point, ScanObjective, StudySpec
from prunescope.targets import find_targets
from prunescope.trials.queue import run_queued
from prunescope.units import WeightPruning, find_units

TOLERANCE = 0.02  # two points: about 12 of the 600 validation examples
WHOLE = Ladder(1000, 1000)  # no subsets: every evaluation on all 1000 (synthetic) examples


class Stop(Exception):
    """Raised from on_trial to kill a scan mid-way."""


def load(journal) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    return optuna.load_study(study_name="scan", storage=optuna.storages.JournalStorage(backend))


@pytest.fixture(scope="module")
def trained() -> tuple[TinyNet, Dataset]:
    """TinyNet trained full-batch on 600 synthetic examples; 600 validation examples."""
    data = make_dataset(n_train=600, n_val=600)
    return fitted(data, steps=150, lr=0.02), data


@pytest.fixture
def forward_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts evaluations that really run the model (in this process): the logits of its inputs."""
    count = [0]
    original = Evaluator.logits

    def counting(self: Evaluator):
        count[0] += 1
        return original(self)

    monkeypatch.setattr(Evaluator, "logits", counting)
    return count


def synthetic(
    values: Callable[[float], float],
    planner: Planner,
    *,
    tolerance: float,
    ladder: Ladder = WHOLE,
    half_width: Callable[[int], float] = lambda n: 0.0,
) -> tuple[ScanOutcome, list[tuple[str, float, int]]]:
    """Scan one synthetic target whose metric at sparsity s is ``values(s)`` (dense: ``values(0)``)."""
    calls = []

    def evaluate(target: str, sparsity: float, n: int) -> tuple[float, float, float]:
        calls.append((target, sparsity, n))
        value = values(sparsity)
        return value, value - half_width(n), value + half_width(n)

    return _run(evaluate, planner, tolerance, ladder), calls


def paired(
    drop: Callable[[float], float],
    planner: Planner,
    *,
    tolerance: float,
    ladder: Ladder,
    churn: float = 0.0,
) -> tuple[ScanOutcome, list[tuple[str, float, int]]]:
    """Scan one synthetic target measured against dense on the same examples, as accuracy on a subset is.

    At sparsity s, on n examples, the pruned model loses ``round(n · (drop(s) + churn))`` of
    the examples the dense model (accuracy 0.9) gets right and gains ``round(n · churn)``.
    """
    calls = []

    def evaluate(target: str, sparsity: float, n: int) -> Measurement:
        calls.append((target, sparsity, n))
        lost, gained = (0, 0) if target == DENSE else (round(n * (drop(sparsity) + churn)), round(n * churn))
        value = 0.9 - (lost - gained) / n
        return Measurement(value, value - 0.05, value + 0.05, lost=lost, gained=gained)

    return _run(evaluate, planner, tolerance, ladder), calls


def _run(evaluate, planner: Planner, tolerance: float, ladder: Ladder) -> ScanOutcome:
    study = StudySpec.at(None, "synthetic", (DENSE, "layer"), ladder.full, "accuracy").open({})
    runner = Runner(study, planner, ["layer"], tolerance=tolerance, ladder=ladder, executor=InProcess(evaluate))
    return runner.run()


def crossings(points, dense: float, tolerance: float) -> list[tuple[float, float]]:
    """Neighbouring (sparsity, sparsity) pairs, dense at 0 included, that disagree on being within tolerance."""
    curve = [(0.0, dense), *((p.sparsity, p.value) for p in points)]
    return [
        (a, b)
        for (a, va), (b, vb) in itertools.pairwise(curve)
        if within(dense - va, tolerance) != within(dense - vb, tolerance)
    ]


def highest_within(points, dense: float, tolerance: float) -> float:
    return max((p.sparsity for p in points if within(dense - p.value, tolerance)), default=0.0)


# Planners and the runner on synthetic curves ---------------------------------------------------


def test_sconce_levels_and_strategies():
    assert tuple(round(x / 100, 2) for x in range(10, 100, 5)) == SCONCE_LEVELS
    assert len(SCONCE_LEVELS) == 18
    assert set(STRATEGIES) == {"grid", "adaptive"}
    assert Grid().ask({}) == list(SCONCE_LEVELS)
    assert Grid().ask(dict.fromkeys(SCONCE_LEVELS, 0.0)) == []


def test_adaptive_brackets_a_monotone_crossing_with_few_points():
    # Drop 0 up to 0.735, then steep: the crossing of 0.01 is at 0.74.
    outcome, _ = synthetic(lambda s: 0.9 - 2 * max(0.0, s - 0.735), Adaptive(0.01), tolerance=0.01)
    points = outcome.points["layer"]
    [(a, b)] = crossings(points, 0.9, 0.01)
    assert a <= 0.74 < b and b - a <= 0.01 + 1e-9
    assert a == highest_within(points, 0.9, 0.01)
    assert outcome.evaluations <= 13 < len(SCONCE_LEVELS)  # 5 coarse + 5 bisections + bend + dense


def test_adaptive_probes_between_a_violation_and_a_later_recovery():
    # Coarse levels only: 0.5 violates, 0.8 recovers, 0.9 and above violate.
    drops = {0.5: 0.1, 0.8: 0.0, 0.9: 0.1, 0.95: 0.2, 0.98: 0.3}
    planned = Adaptive(0.01).ask(drops)
    assert 0.65 in planned  # between the violation at 0.5 and the recovery at 0.8
    assert 0.25 in planned and 0.85 in planned


def test_adaptive_brackets_every_crossing_of_a_non_monotone_curve():
    # A dip beyond tolerance on [0.45, 0.55], within tolerance again up to 0.85.
    def values(s: float) -> float:
        if 0.45 <= s <= 0.55:
            return 0.8
        return 0.9 if s < 0.85 else 0.8 - (s - 0.85)

    outcome, _ = synthetic(values, Adaptive(0.01), tolerance=0.01)
    points = outcome.points["layer"]
    found = crossings(points, 0.9, 0.01)
    assert len(found) == 3
    for (a, b), true in zip(found, (0.45, 0.55, 0.85), strict=True):
        assert b - a <= 0.01 + 1e-9
        assert a < true <= b or a <= true < b
    assert 0.84 <= highest_within(points, 0.9, 0.01) < 0.85
    assert any(0.5 < p.sparsity < 0.8 for p in points)  # the recovery was probed, not assumed


def test_adaptive_probes_beyond_the_coarse_levels_until_the_curve_collapses():
    assert BEYOND_LEVELS == (0.99, 0.995, 0.999)
    within_at_top = {0.5: 0.0, 0.8: 0.0, 0.9: 0.001, 0.95: 0.002, 0.98: 0.004}
    assert 0.99 in Adaptive(0.005).ask(within_at_top)
    # One level at a time, while the drop at the highest one is at most 10 × tolerance: a few points still count.
    assert 0.995 in Adaptive(0.005).ask({**within_at_top, 0.99: 0.03})
    assert 0.999 not in Adaptive(0.005).ask({**within_at_top, 0.99: 0.03, 0.995: 0.06})
    assert 0.99 in Adaptive(0.005).ask({**within_at_top, 0.98: 0.05})
    assert not set(BEYOND_LEVELS) & set(Adaptive(0.005).ask({**within_at_top, 0.98: 0.06}))
    # Custom coarse levels extend above their highest one.
    assert Adaptive(0.005, coarse=(0.5, 0.995)).ask({0.5: 0.0, 0.995: 0.0}) == [0.999]
    # End to end: flat up to 0.992, then steep; the crossing is bracketed between the new levels.
    outcome, _ = synthetic(lambda s: 0.9 - 10 * max(0.0, s - 0.992), Adaptive(0.01), tolerance=0.01)
    sparsities = [p.sparsity for p in outcome.points["layer"]]
    assert {0.99, 0.995, 0.999} <= set(sparsities)
    [(a, b)] = crossings(outcome.points["layer"], 0.9, 0.01)
    assert (a, b) == (0.99, 0.995)  # crossing at 0.993


def test_adaptive_stops_bisecting_where_both_ends_are_within_noise():
    # The crossing of 0.005 lies between 0.8 (within) and 0.9 (beyond).
    drops = {0.5: 0.0, 0.8: 0.004, 0.9: 0.006, 0.95: 0.05, 0.98: 0.2}
    assert 0.85 in Adaptive(0.005).ask(drops)
    assert 0.85 in Adaptive(0.005).ask(drops, unresolved={0.9})  # one end decided: the crossing can be narrowed
    assert 0.85 not in Adaptive(0.005).ask(drops, unresolved={0.8, 0.9})
    assert Grid().ask({}, unresolved={0.5}) == list(SCONCE_LEVELS)


def test_subset_grows_straight_to_the_size_that_decides():
    # Dense 0.90, tolerance 0.05. Interval half-width 0.5 / sqrt(n), narrowed by the
    # finite-population correction: the 800 examples are the whole split, where it is 0.
    values = {0.0: 0.9, 0.3: 0.9, 0.6: 0.88, 0.7: 0.851, 0.9: 0.5}
    outcome, calls = synthetic(
        values.__getitem__,
        Grid((0.3, 0.6, 0.7, 0.9)),
        tolerance=0.05,
        ladder=Ladder(100, 800),
        half_width=lambda n: 0.5 / n**0.5,
    )
    assert sorted(calls) == sorted(
        [
            *((DENSE, 0.0, n) for n in (100, 400, 800)),
            ("layer", 0.3, 100),  # drop 0 ± 0.047: clear of 0.05
            *(("layer", 0.6, n) for n in (100, 400)),  # drop 0.02: ± 0.031 on 200 would not do, ± 0.018 on 400 does
            *(("layer", 0.7, n) for n in (100, 800)),  # drop 0.049: only the whole split decides
            ("layer", 0.9, 100),
        ]
    )
    assert [p.n for p in outcome.points["layer"]] == [100, 400, 800, 100]
    assert sorted(outcome.dense) == [100, 400, 800]
    assert outcome.unresolved == {"layer": []}
    assert outcome.evaluations == len(calls) and outcome.examples == sum(n for _, _, n in calls)


def test_ladder_stops_at_its_top_and_leaves_undecidable_points_unresolved():
    values = {0.0: 0.9, 0.3: 0.9, 0.6: 0.88, 0.7: 0.851, 0.9: 0.5}
    outcome, calls = synthetic(
        values.__getitem__,
        Grid((0.3, 0.6, 0.7, 0.9)),
        tolerance=0.05,
        ladder=Ladder(100, 800, top=400),
        half_width=lambda n: 0.5 / n**0.5,
    )
    assert max(n for _, _, n in calls) == 400
    # 0.7 is on the line: 400 examples would not decide it either, so it is not climbed at all.
    assert [c for c in calls if c[1] == 0.7] == [("layer", 0.7, 100)]
    assert [p.n for p in outcome.points["layer"]] == [100, 400, 100, 100]
    assert outcome.unresolved == {"layer": [0.7]}
    assert Ladder(100, 800, top=400).above(100) == [200, 400] and Ladder(100, 800).above(100) == [200, 400, 800]
    assert Ladder(500, 800, top=100).last == 500 and Ladder(100, 300, top=1000).above(100) == [200, 300]


def test_paired_interval_of_the_drop():
    low, high = paired_drop_interval(0, 0, 500)
    assert low == pytest.approx(-high) and 0.005 < high < 0.006  # no change seen on 500: not yet certain within 0.5
    assert paired_drop_interval(0, 0, 600)[1] < 0.005  # on 600 it is
    low, high = paired_drop_interval(10, 5, 1000)
    assert low < 0.005 < high
    assert high - low > paired_drop_interval(10, 5, 4000)[1] - paired_drop_interval(10, 5, 4000)[0]
    # Against the split the subset was drawn from: narrower, and exact on the whole split.
    assert high - low > (lambda i: i[1] - i[0])(paired_drop_interval(10, 5, 1000, full=2000))
    assert paired_drop_interval(10, 5, 1000, full=1000) == pytest.approx((0.011 / 1.002 - 0.006 / 1.002,) * 2)


def test_paired_points_climb_only_when_a_bigger_subset_can_decide_them():
    # Tolerance half a point, subsets of 200 up to 800 of a large split.
    drops = {0.3: 0.0, 0.5: 0.005, 0.9: 0.2}
    outcome, calls = paired(drops.__getitem__, Grid(tuple(drops)), tolerance=0.005, ladder=Ladder(200, 10**6, 800))
    assert [c for c in calls if c[1] == 0.3] == [("layer", 0.3, 200), ("layer", 0.3, 800)]  # ±1.4 on 200, ±0.35 on 800
    assert [c for c in calls if c[1] == 0.5] == [("layer", 0.5, 200)]  # on the line: no subset decides it
    assert [c for c in calls if c[1] == 0.9] == [("layer", 0.9, 200)]  # clear at once
    assert outcome.unresolved == {"layer": [0.5]}


def test_noise_stops_the_bisection_a_whole_split_would_refine():
    # A gentle slope: drop 0.02 · s crosses half a point at 0.25; the models also swap 1% of their answers.
    def drop(s: float) -> float:
        return 0.02 * s

    whole, _ = paired(drop, Adaptive(0.005), tolerance=0.005, ladder=Ladder(10**5, 10**5), churn=0.01)
    [(a, b)] = crossings(whole.points["layer"], 0.9, 0.005)
    assert b - a <= 0.01 + 1e-9 and whole.unresolved == {"layer": []}

    noisy, _ = paired(drop, Adaptive(0.005), tolerance=0.005, ladder=Ladder(500, 10**5, 2000), churn=0.01)
    points = noisy.points["layer"]
    [(a, b)] = crossings(points, 0.9, 0.005)
    assert b - a > 0.01 and {a, b} <= set(noisy.unresolved["layer"])  # within noise: not refined further
    assert max(p.n for p in points) <= 2000
    assert len(points) < len(whole.points["layer"])  # fewer sparsities measured


# Scans of a trained network ---------------------------------------------------------------------


def test_grid_scan_has_the_sconce_levels_and_matches_independent_evaluations(trained):
    model, data = trained
    curves = scan(model, data, strategy="grid", tolerance=TOLERANCE)
    targets = find_targets(model)
    assert list(curves.curves) == [t.name for t in targets]
    for target in targets:
        curve = curves.curves[target.name]
        assert [p.sparsity for p in curve.points] == list(SCONCE_LEVELS)
        assert curve.numel == target.numel and curve.macs > 0
        assert all(p.n == 600 for p in curve.points)
    assert curves.evaluations == 18 * len(targets) + 1 and curves.reused == 0
    assert curves.examples == curves.evaluations * 600

    # The scan evaluates in batches of the size it measured fastest, this evaluator in one batch of 600: equal
    # accuracies (and so equal intervals) up to an example near a tie (see conftest.near_ties).
    evaluator = Evaluator(model, data.val)
    dense = evaluator.evaluate()
    assert_same_accuracy(curves.dense.value, dense.accuracy, evaluator.logits())
    if curves.dense.value == dense.accuracy:
        assert (curves.dense.low, curves.dense.high) == dense.accuracy_ci
    scores = compute_scores(model, targets, "magnitude")
    for target in targets:
        for level in (0.5, 0.9):
            with applied(model, targets, compute_masks(scores, {target.name: level})):
                expected, logits = evaluator.evaluate(), evaluator.logits()
            [point] = [p for p in curves.curves[target.name].points if p.sparsity == level]
            assert_same_accuracy(point.value, expected.accuracy, logits)
            if point.value == expected.accuracy:
                assert (point.low, point.high) == expected.accuracy_ci


def test_adaptive_needs_far_fewer_evaluations_and_finds_the_grid_crossing(trained):
    model, data = trained
    grid = scan(model, data, strategy="grid", tolerance=TOLERANCE)
    progress = []
    adaptive = scan(model, data, strategy="adaptive", tolerance=TOLERANCE, on_trial=lambda *a: progress.append(a))
    assert adaptive.evaluations < 0.6 * grid.evaluations
    for name, curve in adaptive.curves.items():
        levels = grid.curves[name].sorted_points()
        crossing = highest_within(levels, grid.dense.value, TOLERANCE)
        beyond = min(p.sparsity for p in levels if p.sparsity > crossing)
        found = highest_within(curve.points, adaptive.dense.value, TOLERANCE)
        assert crossing <= found < beyond  # the grid's crossing, refined
        above = min(p.sparsity for p in curve.points if p.sparsity > found)
        # to the adaptive resolution, or to one weight where a weight is more than that (conv: 36 weights)
        next_weight = removed_count(above, curve.numel) - removed_count(found, curve.numel) == 1
        assert above - found <= 0.01 + 1e-9 or next_weight
    # Progress: one call per evaluation; planned grows but never lags behind.
    assert [done for done, _ in progress] == list(range(1, adaptive.evaluations + 1))
    assert all(done <= planned for done, planned in progress)
    assert progress[-1] == (adaptive.evaluations, adaptive.evaluations)


def test_subset_scan_records_n_and_a_dense_reference_per_size(trained, tmp_path):
    model, data = trained
    journal = tmp_path / "scan.journal"
    curves = scan(model, data, subset=75, tolerance=TOLERANCE, storage=journal)
    assert curves.dense.n == 75
    sizes = {p.n for c in curves.curves.values() for p in c.points}
    assert 75 in sizes and sizes <= set(curves.dense_by_n) <= {75, 150, 300}  # at most 4 × the first subset
    # Every point starts on the first subset and climbs the ladder; its curve point is its last evaluation.
    trials = load(journal).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    by_point = collections.defaultdict(list)
    for t in trials:
        by_point[t.params["target"], t.params["sparsity"]].append(t.params["n"])
        if t.params["target"] != DENSE:
            assert {"lost", "gained"} <= set(t.user_attrs)  # paired counts, for accuracy on a subset
            dense = curves.dense_by_n[t.params["n"]].value
            assert dense - t.value == pytest.approx((t.user_attrs["lost"] - t.user_attrs["gained"]) / t.params["n"])
    for name, curve in curves.curves.items():
        for p in curve.points:
            ns = by_point[name, p.sparsity]
            assert ns[0] == 75 and ns == sorted(ns) and ns[-1] == p.n and set(ns) <= {75, 150, 300}
    assert sorted(by_point[DENSE, 0.0]) == sorted(curves.dense_by_n)
    assert curves.evaluations == len(trials) and curves.examples == sum(t.params["n"] for t in trials)
    again = Curves.from_dict(json.loads(json.dumps(curves.to_dict())))
    assert again == curves and again.dense_at(600) == curves.dense_by_n.get(600, curves.dense)
    # In memory the points are evaluated without the queue and its trials: the same curves, per example too.
    private = scan(model, data, subset=75, tolerance=TOLERANCE)
    assert private.to_dict() == curves.to_dict()

    to_whole = scan(model, data, subset=75, max_subset=600, tolerance=TOLERANCE)
    assert set(to_whole.dense_by_n) <= {75, 150, 300, 600}
    assert to_whole.examples >= curves.examples


def test_auto_subset():
    assert auto_subset(6000, 0.005) == 600  # half a point: 3 / 0.005
    assert auto_subset(6000, 0.01) == 300
    assert auto_subset(2400, 0.005) == 600 and auto_subset(2399, 0.005) is None  # its ladder must fit in the split
    assert auto_subset(10**6, 0.0) is None


def test_model_evaluation_counts_against_dense_on_the_same_examples(trained):
    model, data = trained
    targets = find_targets(model)
    scores = compute_scores(model, targets, "magnitude")
    evaluation = evaluation_of(model, data, scores)
    name = targets[1].name
    dense = evaluation(DENSE, 0.0, 150)
    pruned = evaluation(name, 0.8, 150)
    assert (dense.lost, dense.gained) == (0, 0)
    assert pruned.lost + pruned.gained > 0
    assert dense.value - pruned.value == pytest.approx((pruned.lost - pruned.gained) / 150)
    # A process that never evaluated the dense model (a worker, a resumed scan) counts the same.
    assert evaluation_of(model, data, scores)(name, 0.8, 150) == pruned
    # On the whole split too: the paired interval of the drop on unseen data needs them.
    whole = evaluation(name, 0.8, 600)
    assert whole.lost is not None and dense.value - pruned.value != whole.value  # another measurement
    assert evaluation(DENSE, 0.0, 600).value - whole.value == pytest.approx((whole.lost - whole.gained) / 600)


def test_model_evaluation_masks_are_those_of_compute_masks_ties_included(trained):
    model, data = trained
    targets = find_targets(model)
    name = targets[0].name
    scores = compute_scores(model, targets, "magnitude")
    tied = {**scores, name: torch.round(scores[name] * 4) / 4}  # a few distinct values: ties at most cut points
    nan = {**scores, name: torch.where(scores[name] > 0.3, float("nan"), scores[name])}
    for case in (scores, tied, nan):
        evaluation = evaluation_of(model, data, case)
        for sparsity in (0.0, 0.1, 0.33, 0.5, 0.9, 0.99, 1.0):
            # Where the k lowest scores are not unique, compute_masks itself decides: same masks anyway.
            masks = evaluation.pruning.masks(name, sparsity)
            assert masks.keys() == {name}
            assert torch.equal(masks[name], compute_masks(case, {name: sparsity})[name])


def evaluation_of(model, data: Dataset, scores) -> ModelEvaluation:
    targets = find_targets(model)
    pruning = WeightPruning(model, targets, scores)
    return ModelEvaluation(pruning, data.val, metric="accuracy", device=torch.device("cpu"), seed=0)


def test_auto_subset_on_a_small_split_is_the_whole_split(tiny_model, tiny_data):
    curves = scan(tiny_model, tiny_data, subset="auto", strategy="grid", levels=[0.5])
    assert set(curves.dense_by_n) == {len(tiny_data.val)}


def test_weights_and_training_flag_unchanged_after_scan(tiny_model, tiny_data):
    tiny_model.train()
    before = {name: t.clone() for name, t in tiny_model.state_dict().items()}
    scan(tiny_model, tiny_data, criterion="taylor", subset=20, tolerance=0.0)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[name], after[name]) and before[name].dtype == after[name].dtype for name in before)
    assert tiny_model.training


# The study: resume, identity, workers -----------------------------------------------------------


def test_rerun_with_the_same_storage_evaluates_nothing(trained, tmp_path, forward_count):
    model, data = trained
    journal = tmp_path / "out" / "scan.journal"
    first = scan(model, data, storage=journal, subset=150, tolerance=TOLERANCE)
    assert forward_count[0] == first.evaluations > 0 and first.reused == 0
    forward_count[0] = 0
    second = scan(model, data, storage=journal, subset=150, tolerance=TOLERANCE)
    assert forward_count[0] == 0
    assert second.reused == second.evaluations == first.evaluations
    assert second.curves == first.curves and second.dense_by_n == first.dense_by_n

    study = load(journal)
    trial = study.trials[-1]
    assert set(trial.params) == {"target", "sparsity", "n"}
    assert {"low", "high", "seconds", "metric"} <= set(trial.user_attrs)
    assert trial.user_attrs["low"] <= trial.value <= trial.user_attrs["high"]
    assert study.user_attrs["criterion"] == "magnitude"


def test_interrupted_scan_resumes_with_exactly_the_rest(trained, tmp_path, forward_count):
    model, data = trained
    total = scan(model, data, tolerance=TOLERANCE)
    journal, k = tmp_path / "scan.journal", 7

    def kill_after_k(done: int, planned: int) -> None:
        if done == k:
            raise Stop

    with pytest.raises(Stop):
        scan(model, data, storage=journal, tolerance=TOLERANCE, on_trial=kill_after_k)
    forward_count[0] = 0
    resumed = scan(model, data, storage=journal, tolerance=TOLERANCE)
    assert forward_count[0] == total.evaluations - k
    assert resumed.reused == k and resumed.evaluations == total.evaluations
    assert resumed.curves == total.curves


def test_study_of_another_model_or_setting_is_refused_and_left_unchanged(tiny_model, tiny_data, tmp_path):
    journal = tmp_path / "scan.journal"
    scan(tiny_model, tiny_data, strategy="grid", levels=[0.5], storage=journal)
    saved = journal.read_bytes()
    torch.manual_seed(1)
    other = TinyNet().eval()
    with pytest.raises(UsageError, match=f"scan directory {tmp_path} belongs to another model; use another --out"):
        scan(other, tiny_data, strategy="grid", levels=[0.5], storage=journal)
    with pytest.raises(UsageError, match="holds a scan with criterion='magnitude', not 'lamp'"):
        scan(tiny_model, tiny_data, criterion="lamp", strategy="grid", levels=[0.5], storage=journal)
    # A plain scan's points are never mixed with recalibrated or reconstructed ones (nor the reverse).
    with pytest.raises(UsageError, match="holds a scan with recalibrate_bn=0, not 2"):
        scan(tiny_model, tiny_data, strategy="grid", levels=[0.5], storage=journal, recalibrate_bn=2)
    with pytest.raises(UsageError, match="holds a scan with reconstruct='off', not 'mask'"):
        scan(tiny_model, tiny_data, strategy="grid", levels=[0.5], storage=journal, reconstruct="mask",
             calibration=100)
    assert journal.read_bytes() == saved


def test_a_study_recorded_before_a_setting_was_counts_as_made_without_it(tmp_path):
    spec = StudySpec.at(tmp_path / "scan.journal", "scan", (DENSE, "fc.weight"), 10, "accuracy")
    study = spec.open({"criterion": "magnitude"})  # what an older prunescope recorded
    study.enqueue([Point(DENSE, 0.0, 10)])
    run_queued(study.study, ScanObjective(spec, lambda target, sparsity, n: (0.5, 0.4, 0.6)))
    absent = {"reconstruct": "off"}
    with pytest.raises(UsageError, match="holds a scan with reconstruct='off', not 'mask'"):
        spec.open({"criterion": "magnitude", "reconstruct": "mask"}, absent=absent)
    assert spec.open({"criterion": "magnitude", "reconstruct": "off"}, absent=absent).study.user_attrs == {
        "criterion": "magnitude", "reconstruct": "off"}


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-prunescope-dir/deeper/scan.db", "nosuchdialect://host/db"])
def test_storage_url_that_cannot_be_opened(tiny_model, tiny_data, url):
    with pytest.raises(UsageError, match="cannot open storage") as error:
        scan(tiny_model, tiny_data, storage=url)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "random"}, "unknown strategy 'random'"),
        ({"levels": [0.5, 1.0]}, "level 1 is outside"),
        ({"levels": [0.0]}, "level 0 is outside"),
        ({"levels": []}, "levels is empty"),
        ({"tolerance": -0.01}, "tolerance must be at least 0"),
        ({"subset": 0}, "subset must be a positive"),
        ({"subset": "half"}, "subset must be a positive number of examples or 'auto'"),
        ({"max_subset": 0}, "max_subset must be a positive"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"workers": 2}, "several workers share a study on disk"),
        ({"metric": "loss"}, "unknown scan metric 'loss'"),
        ({"criterion": "psychic"}, "unknown criterion 'psychic'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_model, tiny_data, tmp_path, kwargs, message):
    storage = {} if "workers" in kwargs else {"storage": tmp_path / "out" / "scan.journal"}
    with pytest.raises(UsageError, match=message) as error:
        scan(tiny_model, tiny_data, **storage, **kwargs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_two_workers_share_one_study_without_duplicates(trained, tmp_path):
    model, data = trained
    journal = tmp_path / "scan.journal"
    alone = scan(model, data, subset=150, tolerance=TOLERANCE)
    shared = scan(model, data, subset=150, tolerance=TOLERANCE, storage=journal, workers=2)
    # The workers are other processes, each measuring its own batch size: the same values up to an example near
    # a tie (see conftest.near_ties; mostly none, and then exactly), and so the same points.
    ties = scan_near_ties(find_units(model, data, "weight", "magnitude"), data.val.x, alone.curves)
    assert_same_curves(shared.curves, alone.curves, ties)
    assert shared.dense_by_n.keys() == alone.dense_by_n.keys()
    for n, dense in alone.dense_by_n.items():
        assert abs(shared.dense_by_n[n].value - dense.value) * n <= ties[None] + 1e-9
    assert shared.evaluations == alone.evaluations

    study = load(journal)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    per_point = collections.Counter((t.params["target"], t.params["sparsity"], t.params["n"]) for t in complete)
    assert len(per_point) == shared.evaluations and set(per_point.values()) == {1}
