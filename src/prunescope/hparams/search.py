"""Tune the dense model: Bayesian optimisation over a declared space, every trial a training run.

Searches (Optuna):

- ``tpe``: ``TPESampler(multivariate=True)`` (Bergstra et al. 2011; Falkner et al. 2018's
  multivariate kernel density).
- ``gp``: ``GPSampler``, Gaussian-process Bayesian optimisation.
- ``bohb``: BOHB-like multi-fidelity search (Falkner, Klein & Hutter, ICML 2018): TPE
  (multivariate) proposing, Optuna's ``HyperbandPruner`` stopping trials early on the val
  accuracy reported after every epoch; the resource is the epoch.
- ``random``: ``RandomSampler``, the baseline every Bayesian search must beat.

The budget counts trials (finished or stopped early); each trial records the epochs it
ran (user attribute ``epochs``), so searches can be compared at equal epochs spent. A
resumed search runs only the trials its budget still lacks: finished trials are never
repeated. With several workers each process runs trials until the budget is met, so up
to ``workers - 1`` extra trials may finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler, GPSampler, RandomSampler, TPESampler
from optuna.study import MaxTrialsCallback

from prunescope.errors import UsageError
from prunescope.hparams.space import Space
from prunescope.hparams.studies import DONE, finished, in_workers, open_storage, open_study
from prunescope.hparams.trials import Recipe
from prunescope.train import EpochRecord

SEARCHES = ("tpe", "gp", "bohb", "random")
STARTUP_TRIALS = 5  # random proposals before the model-based samplers take over


def sampler_for(search: str, seed: int, startup: int = STARTUP_TRIALS) -> tuple[BaseSampler, optuna.pruners.BasePruner]:
    """The sampler and pruner of ``search`` (one of :data:`SEARCHES`)."""
    if search not in SEARCHES:
        raise UsageError(f"unknown search {search!r}: use one of {', '.join(SEARCHES)}")
    never = optuna.pruners.NopPruner()
    if search == "random":
        return RandomSampler(seed=seed), never
    if search == "gp":
        return GPSampler(seed=seed, n_startup_trials=startup), never
    tpe = TPESampler(multivariate=True, seed=seed, n_startup_trials=startup)
    if search == "bohb":
        return tpe, optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return tpe, never


@dataclass
class TrainObjective:
    """One trial: the space's values, trained with ``recipe`` at ``seed``; val accuracy reported every epoch."""

    space: Space
    recipe: Recipe
    seed: int = 0
    on_trial: Callable[[], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial)

        def report(record: EpochRecord) -> None:
            trial.report(record.val_accuracy, record.epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs", record.epoch)
                raise optuna.TrialPruned(f"stopped after epoch {record.epoch}")

        outcome = self.recipe.run(self.space.config(values, self.seed), report)
        trial.set_user_attr("epochs", outcome.epochs)
        trial.set_user_attr("diverged", outcome.diverged)
        if self.on_trial is not None:
            self.on_trial()
        return outcome.value


@dataclass
class _SearchJob:
    """Run trials of one stored search until its budget is met (picklable: one per worker process)."""

    storage: str
    name: str
    search: str
    seed: int
    budget: int
    objective: TrainObjective

    def __call__(self) -> None:
        sampler, pruner = sampler_for(self.search, self.seed)
        study = optuna.load_study(study_name=self.name, storage=open_storage(self.storage), sampler=sampler,
                                  pruner=pruner)
        remaining = self.budget - len(finished(study))
        if remaining > 0:
            study.optimize(self.objective, n_trials=remaining,
                           callbacks=[MaxTrialsCallback(self.budget, states=DONE)])


def search(
    space: Space,
    recipe: Recipe,
    *,
    method: str = "tpe",
    budget: int = 20,
    storage: Any = None,
    name: str = "dense-search",
    seed: int = 0,
    workers: int = 1,
    on_trial: Callable[[], None] | None = None,
) -> optuna.Study:
    """Tune ``space`` for ``recipe`` with ``budget`` trials (resuming a stored search); return the study.

    ``storage``: a journal file path, an Optuna storage URL, or None (in memory). The study's
    identity (space, search, seed, model and data) is stored with it, and a stored study with
    another is refused, naming the difference.
    """
    if budget < 1:
        raise UsageError(f"--budget must be at least 1 trial, got {budget}")
    if workers > 1 and storage is None:
        raise UsageError("several workers share a study on disk: give a storage (an --out directory or a URL)")
    sampler, pruner = sampler_for(method, seed)
    identity = {"role": "search", "space": space.to_dict(), "search": method, "seed": seed,
                "model": recipe.model_spec, "dataset": recipe.dataset_spec}
    study = open_study(open_storage(storage), name, identity, sampler=sampler, pruner=pruner)
    objective = TrainObjective(space, recipe, seed, on_trial)
    remaining = budget - len(finished(study))
    if remaining <= 0:
        return study
    if workers == 1:
        study.optimize(objective, n_trials=remaining)
    else:
        in_workers(_SearchJob(str(storage), name, method, seed, budget, TrainObjective(space, recipe, seed)), workers)
    return study


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The params of the best finished trial (a trial stopped early never counts as best)."""
    complete = [t for t in finished(study, (optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        raise UsageError("the search finished no trial: raise --budget")
    return dict(max(complete, key=lambda t: (t.value, -t.number)).params)


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by the study's finished and stopped trials."""
    return sum(int(t.user_attrs.get("epochs", 0)) for t in finished(study))
