"""The Optuna study behind a scan: open it, queue points, run queued trials, look up finished ones.

Every evaluation is one trial with params ``target`` (categorical over :data:`DENSE` and
every target name of the model), ``sparsity`` (float in [0, 1]) and ``n`` (examples
evaluated); its value is the metric, its user attributes ``metric``, ``low`` / ``high``
(confidence interval), ``seconds`` (wall time of the evaluation) and, for accuracy on a
subset, ``lost`` / ``gained`` (examples the dense model got right and this one wrong, and
the reverse, on the same examples) and ``correct``: which of the ``n`` examples it got right
(:func:`prunescope.evaluate.pack_bits`, in the order of
:func:`prunescope.evaluate.subset_indices`). Points are queued with
``enqueue_trial`` and taken with ``ask`` / ``tell``, so any number of processes can share
one study: Optuna hands each queued trial to exactly one of them.

The study's user attributes hold the scan's identity (model and data fingerprints,
criterion, metric, seed); a study with another identity is refused, untouched.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from prunescope.curves import CurvePoint
from prunescope.errors import UsageError

DENSE = "(dense)"  # the ``target`` of the dense reference (sparsity 0)



@dataclass(frozen=True, order=True)
class Point:
    """One evaluation: ``target`` at ``sparsity`` (fraction of its weights) on ``n`` examples."""

    target: str
    sparsity: float
    n: int


@dataclass(frozen=True)
class Measurement:
    """One evaluation's result: the metric ``value`` with its confidence interval (``low ==
    high == value`` without one) and, when known, the paired comparison with the dense model
    on the same examples: ``lost`` (dense right, this wrong) and ``gained`` (the reverse);
    ``correct``: which examples it got right, packed (:func:`prunescope.evaluate.pack_bits`;
    None for a metric other than accuracy, or a trial recorded before prunescope kept them)."""

    value: float
    low: float
    high: float
    lost: int | None = None
    gained: int | None = None
    correct: str | None = None

    def at(self, point: Point) -> CurvePoint:
        """This result as the curve point of ``point``."""
        return CurvePoint(point.sparsity, self.value, self.low, self.high, point.n)


Evaluate = Callable[[str, float, int], "Measurement | tuple[float, float, float]"]
"""``evaluate(target, sparsity, n) -> Measurement``: the metric of the model with ``target``
at ``sparsity`` (others dense; :data:`DENSE` for the dense model) on ``n`` examples, its
confidence interval and optionally the paired counts; a plain ``(value, low, high)`` is
accepted too."""


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial INFO lines (progress goes through ``on_trial``); restore after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass(frozen=True)
class StudySpec:
    """Where a scan's study lives and how its trials are parametrised; picklable, for workers.

    storage: a journal file path, a database URL (contains ``://``) or None (in memory).
    targets: the categorical choices of ``target``: :data:`DENSE` and every target of the model.
    full: examples in the validation split, the largest ``n``.
    metric: name of the metric stored as the trial value.
    """

    storage: str | None
    name: str
    targets: tuple[str, ...]
    full: int
    metric: str

    @classmethod
    def at(
        cls, storage: str | os.PathLike | None, name: str, targets: tuple[str, ...], full: int, metric: str
    ) -> StudySpec:
        return cls(None if storage is None else os.fspath(storage), name, targets, full, metric)

    def _is_url(self) -> bool:
        return self.storage is not None and "://" in self.storage

    def where(self) -> str:
        """How a message names this study: its directory for a journal file, else the URL."""
        if self._is_url():
            return f"study {self.name!r} at {self.storage}"
        return f"scan directory {Path(self.storage or '.').parent}"

    def _backend(self) -> BaseStorage:
        if self.storage is None:
            return InMemoryStorage()
        try:
            if self._is_url():
                return optuna.storages.get_storage(self.storage)
            Path(self.storage).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(self.storage))
        # A database URL fails in many ways (unknown dialect, missing driver, no server, bad
        # path); a journal file with OSError or a corrupt log. All are the user's to fix.
        except Exception as error:
            raise UsageError(f"cannot open scan storage {self.storage}: {_first_line(error)}") from None

    def open(self, identity: dict[str, str | int]) -> ScanStudy:
        """Load the study or create it; refuse, without writing to it, a study with another identity."""
        storage = self._backend()
        try:
            # load_study first: create_study(load_if_exists=True) appends to a journal even when the study exists.
            study = optuna.load_study(study_name=self.name, storage=storage)
        except KeyError:
            study = optuna.create_study(
                storage=storage, study_name=self.name, direction="maximize", load_if_exists=True
            )
        stored = study.user_attrs
        if not stored and study.trials:
            raise UsageError(f"{self.where()} holds a study that is not a prunescope scan; use another --out")
        for key, value in identity.items():
            if key in stored and stored[key] != value:
                if key == "model":
                    raise UsageError(f"{self.where()} belongs to another model; use another --out")
                raise UsageError(
                    f"{self.where()} holds a scan with {key}={stored[key]!r}, not {value!r}; use another --out"
                )
        for key, value in identity.items():
            if key not in stored:
                study.set_user_attr(key, value)
        return ScanStudy(study, self)

    def attach(self) -> ScanStudy:
        """Load the study that :meth:`open` checked (in a worker process)."""
        return ScanStudy(optuna.load_study(study_name=self.name, storage=self._backend()), self)


class ScanStudy:
    """One scan's trials: queue points, run queued ones, read finished ones back."""

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study = study
        self.spec = spec

    def finished(self) -> dict[Point, Measurement]:
        """Every COMPLETE trial as ``{point: measurement}``."""
        return {
            Point(t.params["target"], t.params["sparsity"], t.params["n"]): Measurement(
                t.value, t.user_attrs["low"], t.user_attrs["high"],
                t.user_attrs.get("lost"), t.user_attrs.get("gained"), t.user_attrs.get("correct"),
            )
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }

    def _waiting(self) -> list[dict]:
        # enqueue_trial keeps the params of a queued trial in its system attributes.
        return [
            t.system_attrs["fixed_params"] for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        ]

    def enqueue(self, points: Iterable[Point]) -> None:
        """Queue ``points``, skipping those already queued (by an interrupted run or another process)."""
        queued = {Point(p["target"], p["sparsity"], p["n"]) for p in self._waiting()}
        for point in points:
            if point not in queued:
                params = {"target": point.target, "sparsity": point.sparsity, "n": point.n}
                self.study.enqueue_trial(params, user_attrs={"metric": self.spec.metric})

    def run_next(self, evaluate: Evaluate) -> tuple[Point, Measurement] | None:
        """Take one queued trial, evaluate and tell it; None when the queue is empty."""
        if not self._waiting():
            return None
        trial = self.study.ask()
        if "metric" not in trial.user_attrs:
            # Another worker took the last queued trial between our look and our ask, so ask
            # made a fresh trial; it must not stay RUNNING.
            trial.set_user_attr("note", "queue was empty")
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        point = Point(
            trial.suggest_categorical("target", self.spec.targets),
            trial.suggest_float("sparsity", 0.0, 1.0),
            trial.suggest_int("n", 1, self.spec.full),
        )
        start = time.perf_counter()
        try:
            measured = evaluate(point.target, point.sparsity, point.n)
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        if not isinstance(measured, Measurement):
            measured = Measurement(*measured)
        trial.set_user_attr("low", measured.low)
        trial.set_user_attr("high", measured.high)
        if measured.lost is not None and measured.gained is not None:
            trial.set_user_attr("lost", measured.lost)
            trial.set_user_attr("gained", measured.gained)
        if measured.correct is not None:
            trial.set_user_attr("correct", measured.correct)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        self.study.tell(trial, measured.value)
        return point, measured
