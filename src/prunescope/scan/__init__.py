"""Sensitivity scan: per target, the metric as a function of that target's sparsity, others dense.

Pieces, one job each:

- :mod:`~prunescope.scan.strategy`: planners choosing the sparsities (``grid``, ``adaptive``).
- :mod:`~prunescope.scan.runner`: the rounds (plan, settle on a subset, evaluate).
- :mod:`~prunescope.scan.study`: the Optuna study recording every evaluation (resume, sharing).
- :mod:`~prunescope.scan.executors`: the scan on :mod:`prunescope.trials` executors (local,
  processes, Ray) evaluating the study's queued points.
- :mod:`~prunescope.scan.evaluation`: the evaluation of a real model under masks.
- :mod:`~prunescope.scan.identity`: fingerprints that tie a study to one model and dataset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import nn

from prunescope.criteria import NEEDS_DATA
from prunescope.curves import Curve, Curves
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.reconstruct import fallen_back, reconstructing
from prunescope.scan.evaluation import ModelEvaluation, example_results
from prunescope.scan.executors import executor
from prunescope.scan.identity import data_fingerprint, model_fingerprint
from prunescope.scan.runner import Ladder, Runner
from prunescope.scan.strategy import SCONCE_LEVELS, STRATEGIES, Whole, make_planner
from prunescope.scan.study import DENSE, StudySpec, quiet_optuna
from prunescope.scores import default_metric
from prunescope.targets import find_targets
from prunescope.train.batchnorm import bn_batches, recalibrating
from prunescope.trials.executors import executor_kind as choose_executor
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from prunescope.units import GRANULARITIES, BlockUnits, WeightPruning, find_units

__all__ = ["GRANULARITIES", "SCAN_METRICS", "SCONCE_LEVELS", "STRATEGIES", "auto_subset", "scan"]

SCAN_METRICS = ("accuracy", "macro_f1", "perplexity")  # curves hold their scores: higher is better (prunescope.scores)
SUBSET_GROWTH = 4  # by default a point's subset grows to at most 4 times the first one
AUTO_SUBSET_COVERAGE = 3.0  # subset="auto": n = 3 / tolerance examples
# What a study that holds trials but does not record these settings was scanned with (recorded only since).
IDENTITY_ABSENT = {"reconstruct": "off", "recalibrate_bn": 0, "units": "matrix"}


def auto_subset(val: int, tolerance: float) -> int | None:
    """The first subset size of ``subset="auto"``: ``ceil(3 / tolerance)``, or None (the whole split).

    On ``n`` examples the paired interval of the drop of a point that changes no prediction
    is about ±2.8/n, so from ``n = 3 / tolerance`` (600 for half a point) such points are
    decided on their first evaluation, while clear violations cost no more. A subset is used
    only where its ladder (up to 4 times as many examples) fits within the split;
    otherwise, and for a zero tolerance, the whole split.
    """
    if tolerance <= 0:
        return None
    first = math.ceil(AUTO_SUBSET_COVERAGE / tolerance - 1e-9)
    return first if SUBSET_GROWTH * first <= val else None


def _check(
    tolerance: float, metric: str, subset: int | str | None, max_subset: int | None, val: int,
) -> None:
    if tolerance < 0:
        raise UsageError(f"tolerance must be at least 0 (a fraction of the metric, e.g. 0.005), got {tolerance:g}")
    if metric not in SCAN_METRICS:
        raise UsageError(f"unknown scan metric {metric!r}: use one of {', '.join(SCAN_METRICS)}")
    if isinstance(subset, str):
        if subset != "auto":
            raise UsageError(f"subset must be a positive number of examples or 'auto', got {subset!r}")
    elif subset is not None and subset < 1:
        raise UsageError(f"subset must be a positive number of examples, got {subset}")
    if max_subset is not None and max_subset < 1:
        raise UsageError(f"max_subset must be a positive number of examples, got {max_subset}")
    if val < 1:
        raise UsageError("the validation split is empty: a scan evaluates on it")


def scan(
    model: nn.Module,
    data: Dataset,
    *,
    criterion: str = "magnitude",
    strategy: str = "adaptive",
    levels: Sequence[float] | None = None,
    tolerance: float = 0.005,
    metric: str | None = None,
    subset: int | str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    device: str = "auto",
    storage: str | os.PathLike | None = None,
    study_name: str = "scan",
    workers: int = 1,
    seed: int = 0,
    on_trial: Callable[[int, int], None] | None = None,
    max_subset: int | None = None,
    granularity: str = "weight",
    executor_kind: str | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    recalibrate_bn: int = 0,
    reconstruct: str | None = None,
    calibration: int | None = None,
    reconstruct_fallback: bool = False,
    units: str = "matrix",
) -> Curves:
    """Sensitivity curves of every target of ``model`` on ``data.val``: one target pruned, others dense.

    Args:
        criterion: which weights of a target go first (see :mod:`prunescope.criteria`);
            with ``granularity="channel"`` which channels of a group go first, a group
            importance of :mod:`prunescope.structured.importance` (``l1``, ``l2``, ``bn``,
            ``taylor``, ``fpgm``, ``lamp``). Scores are computed once (gradient criteria
            use ``data.train``).
        strategy: ``grid`` (every level of ``levels``, by default sconce's 0.10, 0.15, …,
            0.95) or ``adaptive`` (coarse ``levels``, by default 0.5, 0.8, 0.9, 0.95, 0.98,
            then 0.99, 0.995 and 0.999 in turn while the drop at the highest level so far
            is at most 10 × ``tolerance``, then bisection to 0.01 where a curve crosses
            ``tolerance``, stopped early where the crossing lies within the subset's noise; see
            :class:`~prunescope.scan.strategy.Adaptive`).
        levels: sparsities in (0, 1) overriding the strategy's levels.
        tolerance: allowed drop of the score from dense: a fraction of accuracy (0.005 = 0.5
            points), or for perplexity ``ln(1 + r)`` for a relative increase r
            (:meth:`prunescope.scores.Score.allowed`); signed, an improvement never violates it.
        metric: ``accuracy`` or ``macro_f1`` (fractions in [0, 1]) or ``perplexity`` (a language
            model; curves hold ``-ln perplexity``); None: perplexity for labels per token, else accuracy.
        subset: evaluate on a seeded subset of this many validation examples; a point whose
            decision (drop within tolerance?) is within noise is evaluated again on twice
            as many, up to ``max_subset``; one still within noise there keeps that
            measurement and its interval (``low`` / ``high``; pickers can judge ``low``).
            For accuracy the noise is that of the drop from the dense model on the same
            examples (a paired interval: two models that agree on most examples differ
            little). The dense reference is evaluated on every size used
            (``Curves.dense_by_n``). ``"auto"``: :func:`auto_subset` (``3 / tolerance``
            examples, 600 for half a point, where the split holds at least 4 times that;
            otherwise the whole split). None: the whole split.
        include: globs of the targets to scan (default: every target).
        exclude: globs of the targets to leave out.
        device: ``auto``, ``cpu``, ``cuda``…
        storage: where the Optuna study lives: a journal file path, a database URL
            (``sqlite:///scan.db``, ``postgresql://…``), or None (in memory, no resume).
            Finished evaluations found there are reused, so a killed scan resumes.
        study_name: name of the study in ``storage`` (one database holds many scans).
        workers: workers evaluating in parallel (more than one needs a persistent ``storage``).
            Any number of scans (processes, machines) with the same ``storage`` and
            ``study_name`` share the study: none evaluates a point another has evaluated or
            is evaluating, and each waits for the points it needs wherever they run.
        seed: seed of the subset sample and of the random / gradient criteria.
        on_trial: ``on_trial(done, planned)`` after every evaluation (run or reused);
            ``planned`` grows as the adaptive strategy plans more.
        max_subset: the largest subset a point climbs to (None: 4 × ``subset``; the whole
            split's size: every undecided point up to the whole split). Only with ``subset``.
        granularity: ``weight`` (targets are weight tensors, sparsity the fraction of weights
            removed) or ``channel`` (targets are the coupled channel groups of
            :func:`prunescope.structured.groups.find_groups`, sparsity the fraction of a
            group's channels removed, all its members' slices masked at once so that the
            drop is the one physical removal causes; checked on a val batch before scanning).
        executor_kind: who evaluates (:mod:`prunescope.trials.executors`): ``local`` (this
            process), ``processes`` (``workers`` spawned processes; a dead one is replaced)
            or ``ray`` (``workers`` Ray actors); None: ``local`` for one worker, else ``processes``.
        ray_address: the Ray cluster to join (``auto``: the running one; None: a local one).
        gpus_per_worker: the GPU share of each Ray worker (0.25: four workers per GPU).
        heartbeat_interval: seconds between the heartbeats of a running trial.
        grace_period: seconds; a trial running in ``storage`` whose heartbeat is older than
            this (or whose process on this host is gone) is failed and its point evaluated again.
        recalibrate_bn: re-estimate BatchNorm statistics of every pruned point on this many
            batches of 128 training examples (:class:`~prunescope.train.batchnorm.
            RecalibratedPruning`; statistics restored after each point). 0: off (default).
        reconstruct: ``mask`` or ``obs`` prunes every point by layer-wise reconstruction of
            its one target (the others dense) on ``calibration`` seeded train inputs
            (:class:`~prunescope.reconstruct.ReconstructedPruning`; ``mask`` re-fits the kept
            weights of the criterion's masks, ``obs`` also chooses the masks); weight
            granularity only. None: masks alone (default). A study holds one setting: resuming
            it with another is refused. ``reconstruct_fallback``: targets whose inputs cannot
            be captured are scanned with the criterion's masks alone (``Curves.fallback``)
            instead of refused.
        units: ``matrix`` (one curve per weight tensor) or ``block`` (one curve per block of the
            network, :class:`~prunescope.units.BlockUnits`: a point prunes every matrix of its block at
            that sparsity, the block's count exact; ``Curves.members`` lists each block's matrices);
            weight granularity only.

    Returns:
        :class:`~prunescope.curves.Curves` with one curve per target (one point per
        sparsity, measured on its final subset size ``n``), the dense point on the first
        subset size, and the costs (``evaluations``, ``reused``, ``examples``).

    The model's weights are bit-identical afterwards: pruning is applied in place and undone.
    """
    metric = metric or default_metric(data.val)
    planner = make_planner(strategy, levels, tolerance)
    _check(tolerance, metric, subset, max_subset, len(data.val))
    executor_kind = choose_executor(
        executor_kind, workers, shared=storage is not None, gpus_per_worker=gpus_per_worker
    )
    model.to(resolve_device(device))
    found = find_units(model, data, granularity, criterion, include=include, exclude=exclude, seed=seed, units=units)
    empty = [Curve(u.name, u.size, u.macs, params=u.params) for u in found.units]
    if reconstruct is not None and not isinstance(found, WeightPruning):
        raise UsageError("reconstruction re-fits the weights of a layer: it applies to weight granularity, not "
                         f"{granularity}")
    base = reconstructing(found, data.train, reconstruct, calibration, fallback=reconstruct_fallback)
    pruning = recalibrating(base, data.train, bn_batches(model, recalibrate_bn))
    full = len(data.val)
    first = min((auto_subset(full, tolerance) if subset == "auto" else subset) or full, full)
    top = max_subset if max_subset is not None else SUBSET_GROWTH * first
    spec = StudySpec.at(
        storage, study_name, (DENSE, *found.every), full, metric,
        heartbeat_interval=heartbeat_interval, grace_period=grace_period,
    )
    # An in-memory study is new and private to this call: no stored identity to check, so no fingerprints.
    reads_train = criterion in NEEDS_DATA or recalibrate_bn or reconstruct is not None
    identity = {} if storage is None else {
        "model": model_fingerprint(model, find_targets(model)),
        "criterion": criterion,
        "granularity": granularity,
        "units": units,
        "metric": metric,
        "seed": seed,
        "recalibrate_bn": recalibrate_bn,
        "reconstruct": reconstruct or "off",
        **({"calibration": calibration} if reconstruct is not None else {}),
        # Last: a setting that reads the train split changes the fingerprint too; the message names the setting.
        "data": data_fingerprint([data.val, data.train] if reads_train else [data.val]),
    }
    evaluate = ModelEvaluation(pruning, data.val, metric=metric, device=device, seed=seed)
    with quiet_optuna():
        study = spec.open(identity, absent=IDENTITY_ABSENT)
        evaluate.remember(study.finished())  # the dense answers of a resumed scan, for the paired counts
        with executor(
            evaluate, study, executor_kind, workers, ray_address=ray_address, gpus_per_worker=gpus_per_worker
        ) as chosen:
            outcome = Runner(
                study,
                {unit.target: Whole(planner, unit.numel, exact=found.whole_levels) for unit in empty},
                [curve.target for curve in empty],
                tolerance=tolerance,
                ladder=Ladder(first, full, top),
                executor=chosen,
                on_trial=on_trial,
            ).run()
    return Curves(
        metric=metric,
        criterion=criterion,
        dense=outcome.dense[min(outcome.dense)],
        curves={unit.target: replace(unit, points=outcome.points[unit.target]) for unit in empty},
        evaluations=outcome.evaluations,
        reused=outcome.reused,
        evaluated_here=outcome.evaluated_here,
        examples=outcome.examples,
        dense_by_n=outcome.dense,
        granularity=granularity,
        skipped=found.skipped,
        per_example=example_results(outcome, full, seed) if metric == "accuracy" else None,
        reconstruct=reconstruct,
        fallback=fallen_back(base),
        units=found.unit_kind,
        members=found.members if isinstance(found, BlockUnits) else {},
    )

