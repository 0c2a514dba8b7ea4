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
ran (user attribute ``epochs``), so searches can be compared at equal epochs spent. The
budget is ``budget`` queued *slots* (points ``{"slot": i}``, which fix none of the space's
knobs: the sampler chooses a slot's params when a worker takes it), so a resumed search runs only the
trials its budget still lacks, finished trials are never repeated, and any number of
workers (:mod:`prunescope.trials.executors`) run exactly ``budget`` trials. A slot's
sampler is seeded by the search's seed and the slot's number: the random trials (all of
``random``, the first :data:`STARTUP_TRIALS` of the others) are the same on every executor;
later model-based proposals condition on the trials finished when their slot is taken.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from prunescope.errors import UsageError
from prunescope.hparams.space import Space
from prunescope.hparams.studies import finished, run_study
from prunescope.hparams.trials import Recipe
from prunescope.train import EpochRecord
from prunescope.trials.points import LOCAL, Execution
from prunescope.trials.queue import point_of

SEARCHES = ("tpe", "gp", "bohb", "random")
STARTUP_TRIALS = 5  # random proposals before the model-based samplers take over
SLOT = "slot"  # the one fixed param of a search's queued trial: its place in the budget


def sampler_for(search: str, seed: int, startup: int = STARTUP_TRIALS,
                max_resource: int | None = None) -> tuple[BaseSampler, optuna.pruners.BasePruner]:
    """The sampler and pruner of ``search`` (one of :data:`SEARCHES`).

    ``max_resource``: the epochs of a full trial, Hyperband's largest rung. None leaves Optuna's
    ``"auto"``, which prunes nothing until a first trial has finished every epoch and then
    takes its last step + 1 (one more epoch than a trial trains: rungs are placed for it).
    """
    if search not in SEARCHES:
        raise UsageError(f"unknown search {search!r}: use one of {', '.join(SEARCHES)}")
    never = optuna.pruners.NopPruner()
    if search == "random":
        return RandomSampler(seed=seed), never
    if search == "gp":
        return GPSampler(seed=seed, n_startup_trials=startup), never
    tpe = TPESampler(multivariate=True, seed=seed, n_startup_trials=startup)
    if search == "bohb":
        return tpe, optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource or "auto",
                                                   reduction_factor=3)
    return tpe, never


def _slot_seed(seed: int, slot: int) -> int:
    """A seed per (search seed, slot), the same in every process (string seeds are hashed with SHA-512)."""
    return random.Random(f"{seed}/{slot}").getrandbits(31)


class SlotSampler(BaseSampler):
    """``search``'s sampler made afresh for each trial, seeded by the trial's slot (see the module's docstring).

    Picklable, for workers. A fresh sampler per trial proposes what a long-lived one would but
    for its random draws: the model-based samplers read the study's finished trials at every
    proposal (only ``gp`` loses the warm start of its kernel fit).
    """

    def __init__(self, search: str, seed: int) -> None:
        self.search = search
        self.seed = seed
        self.sampler = sampler_for(search, seed)[0]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        slot = (point_of(trial) or {}).get(SLOT)  # None: a stand-in for an empty queue, which samples nothing
        self.sampler = sampler_for(self.search, self.seed if slot is None else _slot_seed(self.seed, slot))[0]
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)


@dataclass
class TrainObjective:
    """One trial: the space's values, trained with ``recipe`` at ``seed``; val accuracy reported every epoch."""

    space: Space
    recipe: Recipe
    seed: int = 0

    def __call__(self, trial: optuna.Trial) -> float:
        values = self.space.suggest(trial)
        config = self.space.config(values, self.seed)

        def report(record: EpochRecord) -> None:
            trial.report(record.val_accuracy, record.epoch)
            # never at the last epoch: the trial is already paid for in full, and Optuna's successive halving
            # has a rung there too (it would discard a finished trial)
            if record.epoch < config.epochs and trial.should_prune():
                trial.set_user_attr("epochs", record.epoch)
                raise optuna.TrialPruned(f"stopped after epoch {record.epoch}")

        outcome = self.recipe.run(config, report)
        trial.set_user_attr("epochs", outcome.epochs)
        trial.set_user_attr("diverged", outcome.diverged)
        return outcome.value


def search(
    space: Space,
    recipe: Recipe,
    *,
    method: str = "tpe",
    budget: int = 20,
    storage: Any = None,
    name: str = "dense-search",
    seed: int = 0,
    execution: Execution = LOCAL,
    on_trial: Callable[[], None] | None = None,
) -> optuna.Study:
    """Tune ``space`` for ``recipe`` with ``budget`` trials (resuming a stored search); return the study.

    ``storage``: a journal file path, an Optuna storage URL, or None (in memory). The study's
    identity (space, search, seed, model and data) is stored with it, and a stored study with
    another is refused, naming the difference. ``execution``: who trains the trials.
    """
    if budget < 1:
        raise UsageError(f"--budget must be at least 1 trial, got {budget}")
    epochs = dict(space.fixed).get("epochs")  # a full trial's epochs, when the space fixes them
    _, pruner = sampler_for(method, seed, max_resource=epochs if isinstance(epochs, int) else None)
    identity = {"role": "search", "space": space.to_dict(), "search": method, "seed": seed,
                "model": recipe.model_spec, "dataset": recipe.dataset_spec}
    return run_study(storage, name, identity, TrainObjective(space, recipe, seed), [{SLOT: i} for i in range(budget)],
                     execution, sampler=SlotSampler(method, seed), pruner=pruner, on_trial=on_trial)


def _slot(trial: FrozenTrial) -> int:
    """The trial's slot (its number for a trial not queued as one)."""
    return (point_of(trial) or {}).get(SLOT, trial.number)


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The params of the best finished trial (a trial stopped early never counts as best; of equals, the
    first slot, whichever worker finished first)."""
    complete = [t for t in finished(study, (optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        raise UsageError("the search finished no trial: raise --budget")
    return dict(max(complete, key=lambda t: (t.value, -_slot(t))).params)


def epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by the study's finished and stopped trials."""
    return sum(int(t.user_attrs.get("epochs", 0)) for t in finished(study))
