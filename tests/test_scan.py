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
from conftest import TinyNet, make_dataset
from torch.nn import functional as F

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks
from prunescope.scan import SCAN_LEVELS_SCONCE, STRATEGIES, scan
from prunescope.scan.executors import InProcess
from prunescope.scan.runner import Ladder, Runner, ScanOutcome
from prunescope.scan.strategy import Adaptive, Grid, Planner, within
from prunescope.scan.study import DENSE, StudySpec
from prunescope.targets import find_targets

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
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(data.train.x), data.train.y).backward()
        optimizer.step()
    return model.eval(), data


@pytest.fixture
def forward_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts evaluations that really run the model (in this process)."""
    count = [0]
    original = Evaluator.evaluate

    def counting(self: Evaluator):
        count[0] += 1
        return original(self)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
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

    study = StudySpec.at(None, "synthetic", (DENSE, "layer"), ladder.full, "accuracy").open({})
    runner = Runner(study, planner, ["layer"], tolerance=tolerance, ladder=ladder, executor=InProcess(evaluate))
    return runner.run(), calls


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
    assert tuple(round(x / 100, 2) for x in range(10, 100, 5)) == SCAN_LEVELS_SCONCE
    assert len(SCAN_LEVELS_SCONCE) == 18
    assert set(STRATEGIES) == {"grid", "adaptive"}
    assert Grid().ask({}) == list(SCAN_LEVELS_SCONCE)
    assert Grid().ask(dict.fromkeys(SCAN_LEVELS_SCONCE, 0.0)) == []


def test_adaptive_brackets_a_monotone_crossing_with_few_points():
    # Drop 0 up to 0.735, then steep: the crossing of 0.01 is at 0.74.
    outcome, _ = synthetic(lambda s: 0.9 - 2 * max(0.0, s - 0.735), Adaptive(0.01), tolerance=0.01)
    points = outcome.points["layer"]
    [(a, b)] = crossings(points, 0.9, 0.01)
    assert a <= 0.74 < b and b - a <= 0.01 + 1e-9
    assert a == highest_within(points, 0.9, 0.01)
    assert outcome.evaluations <= 13 < len(SCAN_LEVELS_SCONCE)  # 5 coarse + 5 bisections + bend + dense


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


def test_subset_grows_only_when_the_decision_is_within_noise():
    # Dense 0.90, tolerance 0.05: threshold 0.85. Interval half-width 0.5 / sqrt(n).
    values = {0.0: 0.9, 0.3: 0.9, 0.6: 0.88, 0.7: 0.85, 0.9: 0.5}
    outcome, calls = synthetic(
        values.__getitem__,
        Grid((0.3, 0.6, 0.7, 0.9)),
        tolerance=0.05,
        ladder=Ladder(100, 800),
        half_width=lambda n: 0.5 / n**0.5,
    )
    assert sorted(calls) == sorted(
        [
            *((DENSE, 0.0, n) for n in (100, 200, 400, 800)),
            ("layer", 0.3, 100),  # 0.90 ± 0.05 is clear of 0.85
            *(("layer", 0.6, n) for n in (100, 200, 400)),  # 0.88: clear once ± 0.025
            *(("layer", 0.7, n) for n in (100, 200, 400, 800)),  # on the threshold: up to the whole split
            ("layer", 0.9, 100),
        ]
    )
    assert [p.n for p in outcome.points["layer"]] == [100, 400, 800, 100]
    assert sorted(outcome.dense) == [100, 200, 400, 800]
    assert outcome.evaluations == len(calls) and outcome.examples == sum(n for _, _, n in calls)


# Scans of a trained network ---------------------------------------------------------------------


def test_grid_scan_has_the_sconce_levels_and_matches_independent_evaluations(trained):
    model, data = trained
    curves = scan(model, data, strategy="grid", tolerance=TOLERANCE)
    targets = find_targets(model)
    assert list(curves.curves) == [t.name for t in targets]
    for target in targets:
        curve = curves.curves[target.name]
        assert [p.sparsity for p in curve.points] == list(SCAN_LEVELS_SCONCE)
        assert curve.numel == target.numel and curve.macs > 0
        assert all(p.n == 600 for p in curve.points)
    assert curves.evaluations == 18 * len(targets) + 1 and curves.reused == 0
    assert curves.examples == curves.evaluations * 600

    evaluator = Evaluator(model, data.val)
    dense = evaluator.evaluate()
    assert (curves.dense.value, curves.dense.low, curves.dense.high) == (dense.accuracy, *dense.accuracy_ci)
    scores = compute_scores(model, targets, "magnitude")
    for target in targets:
        for level in (0.5, 0.9):
            with applied(model, targets, compute_masks(scores, {target.name: level})):
                expected = evaluator.evaluate()
            [point] = [p for p in curves.curves[target.name].points if p.sparsity == level]
            assert (point.value, point.low, point.high) == (expected.accuracy, *expected.accuracy_ci)


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
        assert above - found <= 0.01 + 1e-9  # to the adaptive resolution
    # Progress: one call per evaluation; planned grows but never lags behind.
    assert [done for done, _ in progress] == list(range(1, adaptive.evaluations + 1))
    assert all(done <= planned for done, planned in progress)
    assert progress[-1] == (adaptive.evaluations, adaptive.evaluations)


def test_subset_scan_records_n_and_a_dense_reference_per_size(trained):
    model, data = trained
    curves = scan(model, data, subset=75, tolerance=TOLERANCE)
    assert curves.dense.n == 75
    sizes = {p.n for c in curves.curves.values() for p in c.points}
    assert 75 in sizes and sizes <= set(curves.dense_by_n) <= {75, 150, 300, 600}
    # A point measured on n examples climbed every smaller rung of the ladder first.
    rungs = [[m for m in (75, 150, 300, 600) if m <= p.n] for c in curves.curves.values() for p in c.points]
    assert curves.evaluations == len(curves.dense_by_n) + sum(len(r) for r in rungs)
    assert curves.examples == sum(curves.dense_by_n) + sum(sum(r) for r in rungs)
    again = Curves.from_dict(json.loads(json.dumps(curves.to_dict())))
    assert again == curves and again.dense_at(600) == curves.dense_by_n.get(600, curves.dense)


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
    assert journal.read_bytes() == saved


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-prunescope-dir/deeper/scan.db", "nosuchdialect://host/db"])
def test_storage_url_that_cannot_be_opened(tiny_model, tiny_data, url):
    with pytest.raises(UsageError, match="cannot open scan storage") as error:
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
    assert shared.curves == alone.curves and shared.dense_by_n == alone.dense_by_n
    assert shared.evaluations == alone.evaluations

    study = load(journal)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    per_point = collections.Counter((t.params["target"], t.params["sparsity"], t.params["n"]) for t in complete)
    assert len(per_point) == shared.evaluations and set(per_point.values()) == {1}
