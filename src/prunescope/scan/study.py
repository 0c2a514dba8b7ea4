"""The Optuna study behind a scan: open it, queue points, evaluate queued trials, look up finished ones.

Every evaluation is one trial with params ``target`` (categorical over :data:`DENSE` and
every target name of the model), ``sparsity`` (float in [0, 1]) and ``n`` (examples
evaluated); its value is the metric, its user attributes ``metric``, ``low`` / ``high``
(confidence interval), ``seconds`` (wall time of the evaluation) and, for accuracy on a
subset, ``lost`` / ``gained`` (examples the dense model got right and this one wrong, and
the reverse, on the same examples) and ``correct``: which of the ``n`` examples it got right
(:func:`prunescope.evaluate.pack_bits`, in the order of
:func:`prunescope.evaluate.subset_indices`). Any number of processes (on any number of
machines) can share one study: Optuna hands each queued trial to exactly one of them. A
private study (in memory, :attr:`StudySpec.private`) is not written: nobody could read it,
and its points are evaluated without trials (:class:`prunescope.scan.executors.InProcess`).

The study's user attributes hold the scan's identity (model and data fingerprints,
criterion, metric, seed); a study with another identity is refused, untouched.

Sharing rests on :mod:`prunescope.trials`: points are queued by
:func:`~prunescope.trials.queue.plan` (never one that a trial holds anywhere; again when
its worker died) and evaluated by :func:`~prunescope.trials.queue.run_queued` (through a
:class:`~prunescope.trials.queue.Drain` of :class:`ScanObjective`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from prunescope.curves import CurvePoint
from prunescope.errors import UsageError
from prunescope.trials.queue import RUN_ATTR, Place, optuna_verbosity, plan, run_tag
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, is_url

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


def quiet_optuna() -> contextlib.AbstractContextManager[None]:
    """Silence Optuna's per-trial INFO lines (progress goes through ``on_trial``); restore after."""
    return optuna_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class StudySpec:
    """Where a scan's study lives and how its trials are parametrised; picklable, for workers.

    place: the study's storage and name (:class:`~prunescope.trials.queue.Place`).
    targets: the categorical choices of ``target``: :data:`DENSE` and every target of the model.
    full: examples in the validation split, the largest ``n``.
    metric: name of the metric stored as the trial value.
    """

    place: Place
    targets: tuple[str, ...]
    full: int
    metric: str

    @classmethod
    def at(
        cls,
        storage: str | os.PathLike | None,
        name: str,
        targets: tuple[str, ...],
        full: int,
        metric: str,
        *,
        heartbeat_interval: int = HEARTBEAT_INTERVAL,
        grace_period: int = GRACE_PERIOD,
    ) -> StudySpec:
        """``storage``: a journal file path, a database URL (contains ``://``) or None (in memory)."""
        location = None if storage is None else os.fspath(storage)
        return cls(Place(location, name, heartbeat_interval, grace_period), targets, full, metric)

    @property
    def private(self) -> bool:
        """Whether the study lives in memory: opened afresh by this process, nobody else can reach it."""
        return self.place.location is None

    def where(self) -> str:
        """How a message names this study: its directory for a journal file, else its name and URL."""
        if is_url(self.place.location):
            return f"study {self.place.name!r} at {self.place.location}"
        return f"scan directory {Path(self.place.location or '.').parent}"

    def open(self, identity: dict[str, str | int], absent: Mapping[str, str | int] | None = None) -> ScanStudy:
        """Load the study or create it; refuse, without writing to it, a study with another identity.

        ``absent``: the value an identity key had in a study that holds trials but does not
        record the key (made before it was recorded, e.g. ``{"reconstruct": "off"}``).
        """

        def check(study: optuna.Study) -> None:
            stored = study.user_attrs
            if not stored and study.trials:
                raise UsageError(f"{self.where()} holds a study that is not a prunescope scan; use another --out")
            for key, value in identity.items():
                known = stored[key] if key in stored else (absent or {}).get(key) if study.trials else None
                if known is not None and known != value:
                    if key == "model":
                        raise UsageError(f"{self.where()} belongs to another model; use another --out")
                    raise UsageError(
                        f"{self.where()} holds a scan with {key}={known!r}, not {value!r}; use another --out"
                    )
            for key, value in identity.items():
                if key not in stored:
                    study.set_user_attr(key, value)

        return ScanStudy(self.place.open(check), self)


def _point(params: dict) -> Point:
    return Point(params["target"], params["sparsity"], params["n"])


class ScanStudy:
    """One scan's trials: queue points, read finished ones back (:class:`ScanObjective` evaluates them).

    ``run``: this scan's :func:`~prunescope.trials.queue.run_tag`, which its workers record in
    the trials they evaluate.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study = study
        self.spec = spec
        self.run = run_tag()

    def finished(self) -> dict[Point, Measurement]:
        """Every COMPLETE trial as ``{point: measurement}``."""
        return {
            _point(t.params): Measurement(
                t.value, t.user_attrs["low"], t.user_attrs["high"],
                t.user_attrs.get("lost"), t.user_attrs.get("gained"), t.user_attrs.get("correct"),
            )
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }

    def evaluated_here(self, points: Iterable[Point]) -> int:
        """How many of ``points`` this scan's workers evaluated (the others: processes sharing the
        study, now or in earlier runs)."""
        wanted = set(points)
        if self.spec.private:  # opened empty by this scan, which evaluated every point without trials
            return len(wanted)
        return len({
            point
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if (point := _point(t.params)) in wanted and t.user_attrs.get(RUN_ATTR) == self.run
        })

    def enqueue(self, points: Iterable[Point]) -> int:
        """Queue the ``points`` that no trial holds anywhere (see :func:`~prunescope.trials.queue.plan`)."""
        params = [{"target": p.target, "sparsity": p.sparsity, "n": p.n} for p in points]
        return plan(self.study, self.spec.place, params, user_attrs={"metric": self.spec.metric})


@dataclass(frozen=True)
class ScanObjective:
    """The objective of a scan's queued trials: evaluate the trial's point, record its measurement.

    Picklable (``evaluate`` carries the model), for workers.
    """

    spec: StudySpec
    evaluate: Evaluate

    def __call__(self, trial: optuna.Trial) -> float:
        point = Point(
            trial.suggest_categorical("target", self.spec.targets),
            trial.suggest_float("sparsity", 0.0, 1.0),
            trial.suggest_int("n", 1, self.spec.full),
        )
        start = time.perf_counter()
        measured = self.measure(point)
        trial.set_user_attr("low", measured.low)
        trial.set_user_attr("high", measured.high)
        if measured.lost is not None and measured.gained is not None:
            trial.set_user_attr("lost", measured.lost)
            trial.set_user_attr("gained", measured.gained)
        if measured.correct is not None:
            trial.set_user_attr("correct", measured.correct)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return measured.value

    def measure(self, point: Point) -> Measurement:
        """Evaluate ``point``."""
        measured = self.evaluate(point.target, point.sparsity, point.n)
        return measured if isinstance(measured, Measurement) else Measurement(*measured)
