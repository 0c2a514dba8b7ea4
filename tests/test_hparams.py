"""Hyperparameter study: space, shift measures and their floors, verdict, resumable searches and grids."""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import optuna
import pytest

from prunescope.errors import UsageError
from prunescope.hparams.grid import Grid, axis_values, run_grid
from prunescope.hparams.search import best_params, epochs_spent, search
from prunescope.hparams.shift import Axes, Judged, Shift, distance, judge, measure, pairs, regret, shift, temperature
from prunescope.hparams.space import load_space, parse_space
from prunescope.hparams.studies import finished
from prunescope.hparams.trials import Outcome, Recipe
from prunescope.hparams.verdict import Degree, verdict
from prunescope.train import TrainConfig

SPACE = {"lr": {"low": 1e-3, "high": 1.0, "log": True}, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
         "epochs": 9}


# --------------------------------------------------------------------------- space


def test_space_from_toml(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('epochs = 4\n[lr]\nlow = 0.001\nhigh = 0.1\nlog = true\n'
                    '[batch_size]\ntype = "int"\nlow = 16\nhigh = 128\n[optimizer]\nchoices = ["sgd", "adamw"]\n')
    space = load_space(path)
    assert space.names == ["lr", "batch_size", "optimizer"]
    assert dict(space.fixed) == {"epochs": 4}
    assert space.config({"lr": 0.01, "batch_size": 32, "optimizer": "adamw"}, seed=3) == TrainConfig(
        epochs=4, lr=0.01, batch_size=32, optimizer="adamw", seed=3)
    # log axes are scaled in decades: 0.01 is halfway between 0.001 and 0.1
    assert space.param("lr").unit([0.001, 0.01, 0.1]).tolist() == pytest.approx([0, 0.5, 1])


@pytest.mark.parametrize("declared, message", [
    ({}, "searches nothing"),
    ({"epochs": 3}, "searches nothing"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "low 0.1 above high 0.01"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log scale, so its bounds must be positive"),
    ({"lr": {"low": -1.0, "high": 0.1, "log": True}}, "log scale"),
    ({"dropout": {"low": 0.0, "high": 0.5}}, "unknown hyperparameter 'dropout'"),
    ({"lr": {"low": 0.01}}, "needs low and high"),
    ({"optimizer": {"choices": []}}, "non-empty list of choices"),
    ({"lr": {"low": 0.01, "high": 0.1, "step": 2}}, "unknown key 'step'"),
    ({"lr": {"low": 0.01, "high": 0.1}, "epochs": 0}, "epochs must be at least 1"),
    ({"lr": {"low": float("nan"), "high": 0.1}}, "finite number"),
])
def test_bad_space_is_one_line(declared, message):
    with pytest.raises(UsageError, match=message) as error:
        parse_space(declared)
    assert "\n" not in str(error.value)


def test_axis_values_span_a_decade_each_side_and_stay_inside():
    lr = parse_space(SPACE).param("lr")
    assert axis_values(lr, 0.01, 3) == pytest.approx([0.001, 0.01, 0.1])
    # at the bound the window shifts, keeping two decades
    assert axis_values(lr, 1.0, 3) == pytest.approx([0.01, 0.1, 1.0])
    batch = parse_space({"batch_size": {"type": "int", "low": 16, "high": 20}}).param("batch_size")
    assert axis_values(batch, 18, 5) == [17, 18, 19]  # a quarter of the range either side, whole numbers


# --------------------------------------------------------------------------- shift measures


def _axes(n: int = 7) -> tuple[Axes, Grid]:
    space = parse_space(SPACE)
    grid = Grid(("lr", "weight_decay"), (tuple(10.0 ** np.linspace(-3, 0, n)), tuple(10.0 ** np.linspace(-6, -2, n))),
                ())
    return Axes.of(space, grid), grid


def _bump(n: int, centre: tuple[float, float], height: float = 0.9, width: float = 1.5) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return height - 0.05 * ((i - centre[0]) ** 2 + (j - centre[1]) ** 2) / width**2


def test_identical_landscapes_do_not_move():
    axes, _ = _axes()
    a = _bump(7, (3, 3))
    m = measure(a, a.copy(), axes, tau=0.01)
    assert m.distance == pytest.approx(0, abs=1e-9)
    assert m.regret == 0
    assert m.rank == pytest.approx(1)
    assert m.displacement == {"lr": 0, "weight_decay": 0}
    assert m.importance == {"lr": 0, "weight_decay": 0}


def test_distance_and_displacement_grow_with_a_known_shift():
    axes, _ = _axes()
    a = _bump(7, (2, 3))
    distances, regrets = [], []
    for k in range(4):
        b = _bump(7, (2 + k, 3))
        m = measure(a, b, axes, tau=0.01)
        distances.append(m.distance)
        regrets.append(m.regret)
        # the optimum moved k steps of half a decade along lr, none along weight decay
        assert m.displacement["lr"] == pytest.approx(k * 0.5)
        assert m.displacement["weight_decay"] == 0
    assert distances[0] == pytest.approx(0, abs=1e-9)
    assert all(later > earlier for earlier, later in itertools.pairwise(distances))
    assert all(later > earlier for earlier, later in itertools.pairwise(regrets))
    # a peaked distribution moves as its peak: k steps of 1/6 of the unit square's side
    assert distances[3] == pytest.approx(3 / 6, rel=0.05)
    assert regrets[3] == pytest.approx(0.05 * 9 / 1.5**2)


def test_regret_is_what_the_reference_optimum_costs():
    a = np.array([[0.1, 0.9], [0.5, 0.2]])
    b = np.array([[0.8, 0.6], [0.5, 0.2]])
    assert regret(a, b) == pytest.approx(0.8 - 0.6)
    assert regret(b, a) == pytest.approx(0.9 - 0.1)


def test_noise_floor_comes_from_the_seeds_of_the_reference():
    axes, _ = _axes(5)
    rng = np.random.default_rng(0)
    base = _bump(5, (2, 2))
    dense = base + rng.normal(0, 0.003, size=(3, 5, 5))
    moved = _bump(5, (4, 2)) + rng.normal(0, 0.003, size=(3, 5, 5))
    tau = temperature(dense)
    assert tau == pytest.approx(dense.std(axis=0, ddof=1).mean())
    judged = shift(dense, moved, axes)
    floor = [distance(dense[i], dense[j], axes, tau) for i, j in itertools.permutations(range(3), 2)]
    assert judged.distance.floor == pytest.approx(np.percentile(floor, 95))
    assert len(judged.distance.values) == 6  # every ordered pair of different seeds
    assert judged.distance.significant and judged.regret.significant and judged.rank.significant
    assert judged.displacement["lr"].significant and judged.displacement["lr"].mean == pytest.approx(1.5)
    # one pair in six moving one step is no move, even on a floor of exactly 0
    few = judge(np.array([0.75, 0, 0, 0, 0, 0]), np.zeros(6), absolute=True, at_least=0.75 / 2)
    assert few.floor == 0 and not few.significant
    # the reference against itself is its own floor: nothing significant
    same = shift(dense, dense, axes)
    assert not same.distance.significant and not same.regret.significant and not same.rank.significant
    with pytest.raises(UsageError, match="at least two seeds"):
        temperature(dense[:1])


def test_pairs_never_compare_a_seed_with_itself():
    axes, _ = _axes(3)
    landscapes = np.stack([np.full((3, 3), v) for v in (0.1, 0.2, 0.3)])
    assert all(m.distance == 0 for m in pairs(landscapes, landscapes, axes, 0.01))
    judged = judge(np.array([0.5, 0.6]), np.array([0.1, 0.2]))
    assert judged.significant and judged.floor == pytest.approx(0.195)


# --------------------------------------------------------------------------- verdict


def test_verdict_picks_the_highest_degree_within_the_floor():
    axes, _ = _axes(5)
    rng = np.random.default_rng(1)

    def seeds(centre):
        return _bump(5, centre) + rng.normal(0, 0.002, size=(3, 5, 5))

    dense = seeds((2, 2))
    # pruning to 50% and 70% costs accuracy everywhere but keeps the landscape's shape; 90% moves lr's optimum down
    degrees = [Degree(label, removed, shift(dense, landscape, axes))
               for label, removed, landscape in [("0%", 0.0, dense), ("50%", 0.5, dense - 0.01),
                                                 ("70%", 0.7, dense - 0.03), ("90%", 0.9, seeds((0, 2))),
                                                 ("95%", 0.95, seeds((0, 1)))]]
    result = verdict(list(reversed(degrees)), {"lr": "decades", "weight_decay": "decades"})
    assert result.holds_until == "70%"
    assert result.first_failure == "90%"
    assert result.moves_first.axis == "lr" and result.moves_first.direction == -1
    assert result.moves_first.degree == "90%"
    assert "hold up to 70%" in result.sentence and "lr moves first, down" in result.sentence


# --------------------------------------------------------------------------- searches and grids (fake training)


@dataclass
class FakeRecipe(Recipe):
    """Val accuracy peaked at lr 0.03, weight decay 1e-4, rising over epochs; counts and can fail after N runs."""

    fail_after: int | None = None
    runs: list = field(default_factory=list)

    def run(self, config: TrainConfig, on_epoch=None, checkpoint=None) -> Outcome:
        if self.fail_after is not None and len(self.runs) >= self.fail_after:
            raise KeyboardInterrupt  # the process is killed mid-trial
        self.runs.append((config.lr, config.weight_decay, config.seed))
        peak = 0.95 - 0.04 * math.log10(config.lr / 0.03) ** 2 - 0.01 * math.log10(config.weight_decay / 1e-4) ** 2
        value = 0.0
        for epoch in range(1, config.epochs + 1):
            value = peak * (1 - 0.5**epoch) + 0.001 * (config.seed % 3)
            if on_epoch is not None:
                from prunescope.train import EpochRecord

                on_epoch(EpochRecord(epoch, 0.0, config.lr, value, value, 0.0, 0.0))
        return Outcome(value, config.epochs)


def _recipe(**kwargs) -> FakeRecipe:
    return FakeRecipe({"name": "fake"}, {"name": "fake"}, **kwargs)


def test_killed_search_resumes_without_repeating_a_trial(tmp_path):
    space, storage = parse_space(SPACE), str(tmp_path / "s.journal")
    killed = _recipe(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        search(space, killed, method="tpe", budget=8, storage=storage)
    resumed = _recipe()
    study = search(space, resumed, method="tpe", budget=8, storage=storage)
    assert len(killed.runs) == 3 and len(resumed.runs) == 5  # 3 + 5 = the budget, nothing twice
    assert len(finished(study)) == 8
    assert search(space, _recipe(fail_after=0), method="tpe", budget=8, storage=storage) is not None  # done: no run
    with pytest.raises(UsageError, match="lr was"):
        search(parse_space({**SPACE, "lr": {"low": 1e-4, "high": 1.0, "log": True}}), _recipe(), budget=8,
               storage=storage)


def test_two_searches_sharing_a_study_run_its_budget_once_with_the_params_of_one(tmp_path):
    """Two processes running one stored search (threads here) share its budget: each slot is trained
    once, and each slot's params are those a search alone gives it (its sampler is seeded by the slot)."""
    space, storage = parse_space(SPACE), str(tmp_path / "s.journal")
    recipes = [_recipe(), _recipe()]
    start = threading.Barrier(2)

    def run(recipe: FakeRecipe) -> optuna.Study:
        start.wait()
        return search(space, recipe, method="random", budget=8, storage=storage)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        shared, _ = pool.map(run, recipes)
    assert len(recipes[0].runs) + len(recipes[1].runs) == 8 and len(finished(shared)) == 8
    alone = search(space, _recipe(), method="random", budget=8)
    assert sorted(t.params["lr"] for t in finished(shared)) == sorted(t.params["lr"] for t in finished(alone))


def test_killed_grid_resumes_without_repeating_a_point(tmp_path):
    space, storage = parse_space(SPACE), str(tmp_path / "g.journal")
    grid = Grid.around(space, {"lr": 0.03, "weight_decay": 1e-4}, ["lr", "weight_decay"], [3, 2])
    killed = _recipe(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_grid(space, grid, killed, [0, 1], storage=storage, name="grid", identity={})
    resumed = _recipe()
    values = run_grid(space, grid, resumed, [0, 1], storage=storage, name="grid", identity={})
    assert len(killed.runs) + len(resumed.runs) == 12
    assert not set(killed.runs) & set(resumed.runs)
    assert values.shape == (2, 3, 2)
    # the values sit where their points are: the centre lr 0.03 is best along lr
    assert int(np.argmax(values[0].max(axis=1))) == 1
    again = _recipe()
    assert np.array_equal(run_grid(space, grid, again, [0, 1], storage=storage, name="grid", identity={}), values)
    assert again.runs == []


def test_bohb_stops_trials_early():
    space = parse_space(SPACE)
    study = search(space, _recipe(), method="bohb", budget=30, seed=0)
    states = [t.state for t in study.trials]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, states
    assert any(t.user_attrs["epochs"] < 9 for t in pruned)
    assert epochs_spent(study) < 30 * 9
    assert best_params(study)["lr"] == pytest.approx(0.03, rel=3)


def test_bohb_stops_only_at_hyperband_rungs_of_a_full_trial():
    # 9-epoch trials, reduction factor 3: rungs at epochs 1 and 3 (9 is the full trial); a trial stops nowhere else,
    # and stopping starts before any trial has finished (with max_resource "auto" it could not)
    study = search(parse_space(SPACE), _recipe(), method="bohb", budget=30, seed=0)
    trials = sorted(finished(study), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert {t.user_attrs["epochs"] for t in pruned} <= {1, 3}
    assert all(t.user_attrs["epochs"] == 9 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert epochs_spent(study) == sum(t.user_attrs["epochs"] for t in trials) <= 30 * 9


@pytest.mark.parametrize("method", ["tpe", "gp", "random"])
def test_every_search_runs_its_budget(method):
    study = search(parse_space(SPACE), _recipe(), method=method, budget=6, seed=0)
    assert len(finished(study)) == 6
    assert epochs_spent(study) == 6 * 9


def test_unknown_search_and_storage_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown search 'cma'"):
        search(parse_space(SPACE), _recipe(), method="cma", budget=2)
    with pytest.raises(UsageError, match="cannot open storage"):
        search(parse_space(SPACE), _recipe(), budget=2, storage="nosuchdialect://x/y")


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("fresh", [False, True])
def test_weight_pruned_recovery_holds_the_zeros(tmp_path, monkeypatch, fresh):
    import torch
    from conftest import make_dataset

    from prunescope.apply import export, prune
    from prunescope.hparams import trials
    from prunescope.models import build_model, model_spec

    data = make_dataset()
    spec = model_spec("mlp", data.input_shape, data.num_classes)
    model = build_model("mlp", data.input_shape, data.num_classes)
    masks = prune(model, {"fc1.weight": 0.8, "fc2.weight": 0.5, "fc3.weight": 0.0})
    path = export(model, tmp_path / "pruned.pt", spec, data.spec)
    seen = {}

    def spy(model_, data_, config, **kwargs):
        seen["masks"], seen["weight"] = kwargs["masks"], model_.fc1.weight.detach().clone()
        return real(model_, data_, config, **kwargs)

    real = trials.train
    monkeypatch.setattr(trials, "train", spy)
    outcome = Recipe(spec, data.spec, start=str(path), fresh=fresh, keep_zeros=True, data=data).run(
        TrainConfig(epochs=1, seed=5))
    assert outcome.epochs == 1 and not outcome.diverged
    assert set(seen["masks"]) == {"fc1.weight", "fc2.weight"}  # fc3 has no zero: nothing to hold
    assert torch.equal(seen["masks"]["fc1.weight"], masks["fc1.weight"].bool())
    # fine-tuning starts from the pruned weights, scratch from a fresh initialisation
    started_pruned = bool((seen["weight"] == 0).float().mean() > 0.75)
    assert started_pruned != fresh


def test_flat_search_ranks_knobs_equally():
    from prunescope.hparams.grid import importances

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("a", 0, 1) * 0 + t.suggest_float("b", 0, 1) * 0 + 0.5, n_trials=4)
    assert importances(study) == {"a": 0.5, "b": 0.5}


def _judged(mean: float, significant: bool) -> Judged:
    return Judged(mean, 0.0, 0.0, significant)


def _synthetic(regret_significant: bool, lr_move: float | None) -> Shift:
    """A shift table written by hand: regret beyond its floor or not, lr's optimum moved by ``lr_move`` decades."""
    moved = lr_move is not None
    return Shift(_judged(0.1, False), _judged(0.02, regret_significant), _judged(0.9, False),
                 {"lr": _judged(lr_move or 0.0, moved), "momentum": _judged(0.05, False)},
                 {"lr": _judged(0.0, False), "momentum": _judged(0.0, False)})


def test_the_answer_up_to_x_fewer_macs_follows_from_a_synthetic_shift_table():
    units = {"lr": "decades", "momentum": "momentum"}
    degrees = [Degree("1x MACs", 0.0, _synthetic(False, None)), Degree("0.7x MACs", 0.3, _synthetic(False, None)),
               Degree("0.5x MACs", 0.5, _synthetic(False, None)), Degree("0.25x MACs", 0.75, _synthetic(True, -1.0)),
               Degree("0.35x MACs", 0.65, _synthetic(True, -0.5))]
    result = verdict(degrees, units)
    assert result.holds_until == "0.5x MACs" and result.first_failure == "0.35x MACs"
    assert result.reduction == pytest.approx(2.0)  # 1 / (1 - 0.5)
    assert [(m.axis, m.by, m.degree) for m in result.advice] == [("lr", -0.5, "0.35x MACs")]
    assert result.answer.startswith("up to 2x fewer MACs the dense hyperparameters hold")
    assert "move lr by x0.32 (-0.5 decades)" in result.answer and "2.9x fewer" in result.answer
    assert "momentum" not in result.answer  # its optimum stayed within noise


def test_the_answer_when_every_degree_holds_or_nothing_moves():
    units = {"lr": "decades", "momentum": "momentum"}
    held = verdict([Degree("1x MACs", 0.0, _synthetic(False, None)), Degree("0.25x MACs", 0.75,
                                                                             _synthetic(False, None))], units)
    assert held.reduction == pytest.approx(4.0) and held.first_failure is None and held.advice == ()
    assert held.answer.startswith("up to 4x fewer MACs (every degree tested)")
    unmoved = verdict([Degree("1x MACs", 0.0, _synthetic(False, None)), Degree("0.5x MACs", 0.5,
                                                                                _synthetic(True, None))], units)
    assert unmoved.reduction == pytest.approx(1.0) and "no optimum moved beyond noise: re-tune" in unmoved.answer
