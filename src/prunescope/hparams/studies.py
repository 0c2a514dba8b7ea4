"""Where a hyperparameter study's trials live: Optuna studies in one storage, resumable and shared.

Every stage (the dense search, each grid) is one study of known points on
:mod:`prunescope.trials` (storage, idempotent planning, executors: ``local``,
``processes``, ``ray``), in a journal file (the default, in the output directory) or any
Optuna storage URL (``sqlite:///…``, ``postgresql://…``):

- :func:`open_study`: load or create a study and check its identity (the search space and
  what it trains); a stored study with another identity is refused, naming the difference.
- :func:`run_study`: open it and have every point evaluated on the executor, so that a
  killed stage resumes where it stopped and any number of workers (or processes running the
  same study) share it without evaluating a point twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from prunescope.errors import UsageError
from prunescope.trials.points import Execution, QueuedStudy
from prunescope.trials.queue import FINISHED, Objective, Params, Place

JOURNAL = "hparams.journal"
DONE = FINISHED


def open_study(
    place: Place, identity: Mapping[str, Any], *, sampler: BaseSampler | None = None,
    pruner: BasePruner | None = None,
) -> optuna.Study:
    """Load the study at ``place`` or create it; refuse, untouched, one whose stored identity differs.

    ``identity`` (JSON-like values; ``space`` is the search space's :meth:`Space.to_dict`) is
    stored in the study's user attributes when it is created.
    """

    def check(study: optuna.Study) -> None:
        stored = study.user_attrs
        if not stored and study.trials:
            raise UsageError(f"study {place.name!r} in this storage is not a prunescope hparams study; "
                             "use another --out")
        for key, value in identity.items():
            if key in stored and stored[key] != value:
                raise UsageError(f"study {place.name!r} was started with another {key}: "
                                 f"{_difference(key, stored[key], value)}; use another --out (or --storage) to start "
                                 "afresh")
        for key, value in identity.items():
            if key not in stored:
                study.set_user_attr(key, value)

    return place.open(check, sampler=sampler, pruner=pruner)


def _difference(key: str, stored: Any, given: Any) -> str:
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        for name in sorted(set(stored) | set(given), key=str):
            if name not in given:
                return f"{name} was {stored[name]!r}, now absent"
            if name not in stored:
                return f"{name} is new ({given[name]!r})"
            if stored[name] != given[name]:
                return f"{name} was {stored[name]!r}, now {given[name]!r}"
    return f"was {stored!r}, now {given!r}"


def run_study(
    storage: str | os.PathLike[str] | None,
    name: str,
    identity: Mapping[str, Any],
    objective: Objective,
    points: Sequence[Params],
    execution: Execution,
    *,
    sampler: BaseSampler | None = None,
    pruner: BasePruner | None = None,
    on_trial: Callable[[], None] | None = None,
) -> optuna.Study:
    """Open study ``name`` at ``storage`` (see :func:`open_study`) and have every one of ``points`` finished.

    ``storage``: a journal file path, a database URL or None (in memory: this process only).
    ``objective`` (picklable for other executors than ``local``) evaluates a point's trial;
    ``on_trial()`` is called in this process as each point finishes.
    """
    place = execution.place(None if storage is None else os.fspath(storage), name)
    study = open_study(place, identity, sampler=sampler, pruner=pruner)
    with QueuedStudy(study, place, objective, execution) as queued:
        queued.run(points, None if on_trial is None else lambda *_: on_trial())
    return study


def finished(study: optuna.Study, states: tuple[TrialState, ...] = DONE) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)
