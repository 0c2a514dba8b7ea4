"""The hyperparameter study: do the dense model's hyperparameters still hold once it is pruned?

Protocol (issue 13; seed: "Sensitivity analysis of hyperparameters in deep neural-network pruning"):

1. tune the dense model over the space (:mod:`~prunescope.hparams.search`);
2. choose the grid axes by importance and span the optimum's neighbourhood (:mod:`~prunescope.hparams.grid`);
3. train the dense reference at the optimum and prune it to every degree (:mod:`~prunescope.hparams.degrees`);
4. at every degree, recover the model at every grid point with that point's hyperparameters,
   several seeds each (fine-tuned from the pruned weights, or trained from scratch);
5. measure each landscape's shift from the dense one against the seed-to-seed noise floor
   (:mod:`~prunescope.hparams.shift`) and give the verdict (:mod:`~prunescope.hparams.verdict`).

The dense landscape is degree 0 recovered the same way (the unpruned model fine-tuned, or
trained from scratch, at every point), so a shift measures what pruning changes, not what
changing the procedure does. Every stage is resumable: the studies live in one Optuna
storage (a journal file in ``out`` by default), checkpoints in ``out``. Their trials run
on any :mod:`prunescope.trials` executor (``local``, ``processes``, ``ray``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from prunescope.data import load_dataset
from prunescope.data.types import Dataset
from prunescope.errors import PrunescopeError, UsageError
from prunescope.hparams.degrees import check_levels, label, prune_degrees
from prunescope.hparams.grid import Grid, choose_axes, importances, parse_grid, run_grid
from prunescope.hparams.search import best_params, epochs_spent, search
from prunescope.hparams.shift import Axes, shift, temperature
from prunescope.hparams.space import Space, load_space, parse_space
from prunescope.hparams.studies import JOURNAL
from prunescope.hparams.trials import RECOVERIES, Recipe
from prunescope.hparams.verdict import Degree, verdict
from prunescope.models import model_spec
from prunescope.scan.study import quiet_optuna
from prunescope.trials.points import Execution
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, open_storage
from prunescope.trust import Trust

RESOURCE = {"channel": "MACs", "weight": "weights"}  # what each granularity removes, for the verdict's "X× fewer"
GRID_LIMIT = 1000  # trainings of all grids together (points × seeds × degrees) allowed without force

Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class HparamsConfig:
    """Settings of a study. ``space``: a TOML path, a declaration dict, or None (the default space).

    ``executor`` / ``workers`` / ``ray_address`` / ``gpus_per_worker`` / ``heartbeat_interval``
    / ``grace_period``: who trains the trials (see :class:`~prunescope.trials.points.Execution`).
    """

    model: str = "mlp"
    data: str = "digits"
    data_dir: str | None = None
    limit_train: int | None = None
    val_fraction: float = 0.1
    space: str | dict | None = None
    search: str = "tpe"
    budget: int = 20
    grid: str = "5x5"
    axes: tuple[str, ...] = ()
    seeds: int = 3
    granularity: str = "channel"
    levels: tuple[float, ...] | None = None
    allocator: str = "budget"
    recover: str = "finetune"
    workers: int = 1
    storage: str | None = None
    device: str = "auto"
    seed: int = 0
    force: bool = False
    executor: str | None = None
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def execution(self) -> Execution:
        """Who evaluates the study's trials: the executor, workers and heartbeat settings of this config."""
        return Execution(self.executor, self.workers, self.ray_address, self.gpus_per_worker,
                         self.heartbeat_interval, self.grace_period)


@dataclass
class Landscape:
    """One degree's grid: its pruning, val accuracy per seed ``(seeds, *grid shape)``, and its shift from dense."""

    degree: dict[str, Any]
    values: np.ndarray
    shift: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"degree": self.degree, "values": self.values.tolist(), "mean": self.values.mean(axis=0).tolist(),
                "shift": self.shift}


@dataclass
class HparamsResult:
    """Every table of a study: the search, importances, the grid, one landscape per degree, the verdict."""

    settings: dict[str, Any]
    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]
    space: dict[str, Any]
    search: dict[str, Any]
    importance: dict[str, float]
    grid: Grid
    seeds: list[int]
    temperature: float
    units: dict[str, str]
    landscapes: list[Landscape] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every table as JSON values: settings, space, search, importances, grid, landscapes, verdict."""
        return {"settings": self.settings, "space": self.space, "search": self.search, "importance": self.importance,
                "grid": self.grid.to_dict(), "seeds": self.seeds, "temperature": self.temperature,
                "units": self.units, "landscapes": [ls.to_dict() for ls in self.landscapes], "verdict": self.verdict}

    def landscape_rows(self) -> list[dict[str, Any]]:
        """One CSV row per degree, seed and grid point."""
        rows = []
        for ls in self.landscapes:
            for s, seed in enumerate(self.seeds):
                for point, value in zip(self.grid.points(), ls.values[s].ravel(), strict=True):
                    rows.append({"degree": ls.degree["label"], "removed": ls.degree["removed"], "seed": seed,
                                 **point, "val_accuracy": float(value)})
        return rows

    def shift_rows(self) -> list[dict[str, Any]]:
        """One CSV row per degree and measure: mean, spread over seed pairs, floor, significant."""
        rows = []
        for ls in self.landscapes:
            head = {"degree": ls.degree["label"], "removed": ls.degree["removed"]}
            for measure in ("distance", "regret", "rank"):
                rows.append({**head, "measure": measure, **_judged_row(ls.shift[measure])})
            for kind in ("displacement", "importance"):
                for axis, judged in ls.shift[kind].items():
                    rows.append({**head, "measure": f"{kind}[{axis}]", **_judged_row(judged)})
        return rows


def _judged_row(judged: dict[str, Any]) -> dict[str, Any]:
    return {k: judged[k] for k in ("mean", "std", "floor", "significant")}


def _space(declared: str | dict | None) -> Space:
    if isinstance(declared, dict):
        return parse_space(declared)
    return load_space(declared)


@dataclass(frozen=True)
class Plan:
    """A checked configuration: everything that can be refused is refused before anything is written."""

    space: Space
    sizes: list[int]
    levels: list[float]
    seeds: list[int]


def plan(config: HparamsConfig) -> Plan:
    """Check ``config`` without writing anything; one-line UsageErrors for bad input."""
    space = _space(config.space)
    sizes = parse_grid(config.grid)
    if config.axes and len(config.axes) != len(sizes):
        raise UsageError(f"--grid {config.grid} has {len(sizes)} axes but --axes names {len(config.axes)}")
    for name in config.axes:
        space.param(name)
    if len(sizes) > len(space.params):
        raise UsageError(f"--grid {config.grid} has {len(sizes)} axes but the space searches only "
                         f"{len(space.params)} knobs ({', '.join(space.names)})")
    levels = check_levels(config.granularity, config.levels, config.allocator)
    if config.recover not in RECOVERIES:
        raise UsageError(f"unknown --recover {config.recover!r}: use one of {', '.join(RECOVERIES)}")
    if config.seeds < 2:
        raise UsageError(f"--seeds must be at least 2 (the noise floor is the spread between seeds), "
                         f"got {config.seeds}")
    config.execution().check()  # the studies live in a storage: never in memory
    trainings = int(np.prod(sizes)) * config.seeds * len(levels)
    if trainings > GRID_LIMIT and not config.force:
        raise UsageError(f"the grids need {trainings} trainings ({config.grid} points x {config.seeds} seeds x "
                         f"{len(levels)} degrees), above the limit of {GRID_LIMIT}: shrink them or pass --force")
    return Plan(space, sizes, levels, [config.seed + i for i in range(config.seeds)])


def study(
    config: HparamsConfig, out: str | Path = "prunescope-out/hparams", *, data: Dataset | None = None,
    progress: Progress | None = None,
) -> HparamsResult:
    """Run (or resume) the whole study into ``out``; return every table.

    ``data`` overrides loading ``config.data`` (a dataset built in Python; then ``--workers``
    need its spec to be loadable).
    """
    out = Path(out)
    progress = progress or (lambda stage, done, total: None)
    checked = plan(config)
    space = checked.space
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory")
    storage = config.storage or str(out / JOURNAL)
    if config.storage is not None:
        open_storage(config.storage)  # a storage that cannot be opened is refused before any work
    data = data if data is not None else load_dataset(
        config.data, data_dir=config.data_dir, seed=config.seed, val_fraction=config.val_fraction,
        **({"limit_train": config.limit_train} if config.limit_train else {}))
    spec = model_spec(config.model, data.input_shape, data.num_classes)
    trust = Trust.of_specs(spec, data.spec)  # the factories the user named: checkpoints of them may be loaded
    execution = config.execution()
    fresh = Recipe(spec, data.spec, data_dir=config.data_dir, device=config.device, data=data, trust=trust)

    with quiet_optuna():
        # 1. dense search
        done = iter(range(1, config.budget + 1))
        tuned = search(space, fresh, method=config.search, budget=config.budget, storage=storage,
                       seed=config.seed, execution=execution,
                       on_trial=lambda: progress("dense search", next(done, config.budget), config.budget))
        optimum = best_params(tuned)
        ranked = importances(tuned, seed=config.seed)
        axes = choose_axes(ranked, len(checked.sizes), list(config.axes), space)
        grid = Grid.around(space, optimum, axes, checked.sizes)

        # 2. the dense reference at the optimum, pruned to every degree
        reference = _reference(space, optimum, fresh, out / "dense" / "model.pt", config.seed)
        progress("dense reference", 1, 1)
        degrees = prune_degrees(reference, data, checked.levels, granularity=config.granularity,
                                allocator=config.allocator, out=out, device=config.device, seed=config.seed,
                                on_scan=lambda done_, total: progress("scan", done_, total), trust=trust,
                                execution=execution)

        # 3. a landscape per degree
        values = []
        total = len(grid.points()) * len(checked.seeds)
        for degree in degrees:
            recipe = Recipe(degree.model_spec, data.spec, start=degree.checkpoint, fresh=config.recover == "scratch",
                            keep_zeros=config.granularity == "weight" and degree.removed > 0,
                            data_dir=config.data_dir, device=config.device, data=data, trust=trust)
            count = iter(range(1, total + 1))
            identity = {"checkpoint": degree.checkpoint, "recover": config.recover, "level": degree.level,
                        "granularity": config.granularity, "allocator": config.allocator}
            values.append(run_grid(space, grid, recipe, checked.seeds, storage=storage,
                                   name=f"grid {config.granularity} {config.allocator} {degree.level:g}",
                                   identity=identity, execution=execution,
                                   on_trial=lambda d=degree, c=count: progress(f"grid {d.label}", next(c, total),
                                                                               total)))

    # 4. shifts and verdict
    axes_info = Axes.of(space, grid)
    tau = temperature(values[0])
    units = dict(zip(axes_info.names, axes_info.units, strict=True))
    landscapes, judged = [], []
    for degree, landscape in zip(degrees, values, strict=True):
        moved = shift(values[0], landscape, axes_info, tau)
        landscapes.append(Landscape(degree.to_dict(), landscape, moved.to_dict()))
        judged.append(Degree(degree.label, degree.removed, moved))
    result = HparamsResult(
        settings=config.to_dict() | {"storage": storage, "levels": checked.levels, "grid_labels": [
            label(config.granularity, v) for v in checked.levels]},
        model_spec=spec,
        dataset_spec=data.spec,
        space=space.to_dict(),
        search=_search_table(tuned, config.search, optimum),
        importance=ranked,
        grid=grid,
        seeds=checked.seeds,
        temperature=tau,
        units=units,
        landscapes=landscapes,
        verdict=verdict(judged, units, RESOURCE[config.granularity]).to_dict(),
    )
    return result


def _reference(space: Space, optimum: dict[str, Any], recipe: Recipe, path: Path, seed: int) -> Path:
    """The dense model trained at the optimum (seed ``seed``), checkpointed at ``path`` (resumes)."""
    if recipe.run(space.config(optimum, seed), checkpoint=path).diverged:
        raise PrunescopeError("the dense model diverged at the search's optimum; narrow the learning-rate range")
    return path


def _search_table(tuned: optuna.Study, method: str, optimum: dict[str, Any]) -> dict[str, Any]:
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "epochs": t.user_attrs.get("epochs"),
               "params": t.params, "diverged": t.user_attrs.get("diverged", False),
               "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
              for t in tuned.get_trials(deepcopy=False)
              if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    return {"method": method, "trials": trials, "best": optimum, "best_value": best["value"],
            "epochs_spent": epochs_spent(tuned)}
