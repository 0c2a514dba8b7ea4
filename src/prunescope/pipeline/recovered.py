"""How far the whole model goes *after fine-tuning*: the answer users act on.

For ``ours`` and one baseline, at every sparsity of the sweep: the method's allocation at
exactly that global sparsity (:func:`prunescope.pipeline.compare.compare`, val only), fine-tuned
from the dense weights with the same budget for both, then evaluated on val. Then, for
``ours``, :func:`prunescope.pick.reach.reach` widens the sweep until it brackets the bound
and bisects between the last sparsity within it and the first outside. The test split is
read once, for the model at the answer. For comparison, gradual (AGP, cubic) pruning to
the same sparsity with the same total epochs.

:func:`recovered_channels` asks the same of channels: how many times fewer MACs, after
fine-tuning, within the bound, and the speed-up measured there.

Every fine-tuning run is checkpointed under ``out/<method>@<sparsity>/`` (channels:
``out/channel@<fraction>/``), so a rerun resumes; nothing here selects on test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from prunescope.apply import ChannelPruned, prune_channels
from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import compute_masks
from prunescope.measure import LATENCY_BATCHES, count_macs, measure_speedup
from prunescope.pick import BudgetPicker
from prunescope.pick.baselines import allocate
from prunescope.pick.choose import choose
from prunescope.pick.reach import reach
from prunescope.pipeline.compare import compare
from prunescope.scores import Score, default_metric
from prunescope.targets import chosen_targets
from prunescope.train import TrainConfig, finetune, train
from prunescope.train.gradual import gradual_prune, polynomial_schedule

Progress = Callable[[str], None]


def failed(metric: str, dense: float, max_drop: float) -> float:
    """The score a sparsity that could not be reached counts as: accuracy 0, or a perplexity e times beyond the
    bound (finite, so that the result stays JSON)."""
    return dense - max_drop - 1 if Score(metric).lower_is_better else 0.0


def recovered_sweep(
    model: nn.Module,
    data: Dataset,
    curves: Curves,
    *,
    sparsities: Sequence[float],
    max_drop: float,
    baseline: str,
    tune: TrainConfig,
    out: Path,
    model_spec: dict,
    criterion: str = "magnitude",
    device: str = "auto",
    recalibrate_bn: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tuned val score of ``ours`` and ``baseline`` per sparsity, ours' bisected answer, test once there.

    Scores are those of :mod:`prunescope.scores` (accuracy; minus a language model's log-perplexity), and
    ``max_drop`` is a drop of it.

    Returns a JSON-ready dict: ``curves`` {method: [{sparsity, val}]}, ``reach`` (the sweep,
    widening and bisection of ``ours``), ``answer``, ``test`` at the answer, ``gradual`` at the
    answer (val and test), and ``epochs`` (the fine-tuning budget of every point).
    """
    progress = progress or (lambda _message: None)
    targets = chosen_targets(model, data.vocabulary)[0]
    scores = compute_scores(model, targets, criterion, data=data.train)
    metric = default_metric(data.val)
    dense_val = Evaluator(model, data.val, device=device).evaluate().score(metric)
    recovered: dict[tuple[str, float], tuple[float, nn.Module] | None] = {}

    def fine_tuned(method: str, sparsity: float) -> tuple[float, nn.Module] | None:
        if (method, sparsity) not in recovered:
            row = compare(
                model,
                data,
                [sparsity],
                [method],
                curves=curves,
                criterion=criterion,
                device=device,
                test=False,
                recalibrate_bn=recalibrate_bn,
            ).rows[0]
            if row.error is not None:
                recovered[method, sparsity] = None
            else:
                progress(f"fine-tuning {method} at {sparsity:.1%}")
                result = finetune(
                    copy.deepcopy(model),
                    data,
                    targets,
                    compute_masks(scores, row.allocation),
                    tune,
                    checkpoint=out / f"{method}@{sparsity:g}" / "model.pt",
                    model_spec=model_spec,
                    device=device,
                )
                recovered[method, sparsity] = (
                    Evaluator(result.model, data.val, device=device).evaluate().score(metric),
                    result.model,
                )
        return recovered[method, sparsity]

    def ours_at(sparsity: float) -> float:
        result = fine_tuned("ours", sparsity)
        return failed(metric, dense_val, max_drop) if result is None else result[0]

    found = reach(ours_at, dense_val, sparsities, max_drop)
    for sparsity in sorted(found.points):
        fine_tuned(baseline, sparsity)
    answer = found.answer
    document: dict[str, Any] = {
        "epochs": tune.epochs,
        "baseline": baseline,
        "metric": metric,
        "dense_val": dense_val,
        "curves": {
            method: [
                {"sparsity": s, "val": r[0] if (r := recovered[m, s]) else None}
                for (m, s) in sorted(recovered)
                if m == method
            ]
            for method in ("ours", baseline)
        },
        "reach": found.to_dict(),
        "answer": answer,
        "test": None,
        "gradual": None,
    }
    if answer > 0:
        at_answer = recovered["ours", answer]
        assert at_answer is not None  # the answer is a sparsity ours reached
        document["test"] = Evaluator(at_answer[1], data.test, device=device).evaluate().to_dict()
        document["gradual"] = gradual_at(model, data, answer, tune, out / "gradual", model_spec, criterion, device)
    return document


def gradual_at(
    model: nn.Module,
    data: Dataset,
    sparsity: float,
    tune: TrainConfig,
    out: Path,
    model_spec: dict,
    criterion: str = "magnitude",
    device: str = "auto",
) -> dict[str, Any]:
    """AGP (cubic) from ``model`` to ``sparsity``, global allocation, the total epochs of one ``tune`` run.

    ``min(tune.epochs, 5)`` pruning steps, each followed by ``tune.epochs // steps`` epochs;
    checkpoints under ``out``. Returns ``sparsity``, ``steps``, ``epochs``, ``error`` and the
    pruned model's ``val`` and ``test`` (Evaluator dicts). Where global magnitude would remove
    every weight of a layer at some step, AGP cannot run: ``error`` says so, ``val`` and
    ``test`` are None, and the caller's other results stand.
    """
    steps = max(1, min(tune.epochs, 5))
    per_step = TrainConfig(**{**asdict(tune), "epochs": max(1, tune.epochs // steps)})
    document: dict[str, Any] = {"sparsity": sparsity, "steps": steps, "epochs": steps * per_step.epochs,
                                "error": None, "val": None, "test": None}
    pruned = copy.deepcopy(model)
    targets = chosen_targets(pruned, data.vocabulary)[0]
    try:
        result = gradual_prune(
            pruned,
            data,
            lambda s: allocate("global", pruned, targets, s),
            polynomial_schedule(0.0, sparsity, steps),
            per_step,
            criterion=criterion,
            device=device,
            checkpoint_dir=out,
            model_spec=model_spec,
            targets=targets,
        )
    except UsageError as error:  # an allocation that empties a layer: a result of the baseline, not bad input
        return document | {"error": str(error)}
    return document | {
        "val": Evaluator(result.model, data.val, device=device).evaluate().to_dict(),
        "test": Evaluator(result.model, data.test, device=device).evaluate().to_dict(),
    }


def recovered_channels(
    model: nn.Module,
    data: Dataset,
    curves: Curves,
    *,
    removed_macs: Sequence[float],
    max_drop: float,
    tune: TrainConfig,
    out: Path,
    model_spec: dict,
    device: str = "auto",
    recalibrate_bn: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """How far MACs can be cut by removing channels, after fine-tuning, within ``max_drop`` on val.

    ``curves``: a channel scan of ``model``. For each fraction r of the dense MACs to remove,
    the budget picker (``target_macs = 1 - r``, met exactly on the model's footprint, verified
    on val) chooses how many channels each group keeps; a copy of the model loses those
    channels physically (:func:`prunescope.apply.prune_channels`, the scan's importance) and
    is fine-tuned with ``tune``. :func:`prunescope.pick.reach.reach` widens and bisects over r
    as the recovered sweep does over sparsity. At the answer the test split is read once, and
    the pruned model is timed against the dense one side by side
    (:func:`prunescope.measure.measure_speedup`).

    Returns a JSON-ready dict: ``reach`` (r as "sparsity": the fraction of MACs removed),
    ``answer``, ``dense_macs`` (per sample), ``points`` (per r: val score, parameters and MACs of the model trained),
    ``mac_reduction`` and ``test`` at the answer, ``measure`` (params, MACs, latency, speed-up
    per batch size), ``epochs``.
    """
    progress = progress or (lambda _message: None)
    metric = default_metric(data.val)
    dense_val = Evaluator(model, data.val, device=device).evaluate().score(metric)
    trained: dict[float, tuple[float, nn.Module, ChannelPruned] | None] = {}

    def score_at(fraction: float) -> float:
        if fraction not in trained:
            try:
                choice = choose(curves, BudgetPicker(target_macs=1 - fraction), model, data, device=device,
                                recalibrate_bn=recalibrate_bn)
            except UsageError:  # below what one channel per group leaves: a failure of this fraction
                trained[fraction] = None
                return failed(metric, dense_val, max_drop)
            progress(f"fine-tuning channels at {fraction:.0%} fewer MACs")
            pruned = prune_channels(copy.deepcopy(model), model_spec, choice.verified.allocation,
                                    importance=curves.criterion, data=data.train)
            result = train(pruned.model, data, tune, checkpoint=out / f"channel@{fraction:g}" / "model.pt",
                           model_spec=pruned.model_spec, device=device)
            trained[fraction] = (Evaluator(result.model, data.val, device=device).evaluate().score(metric),
                                 result.model, pruned)
        entry = trained[fraction]
        return failed(metric, dense_val, max_drop) if entry is None else entry[0]

    found = reach(score_at, dense_val, removed_macs, max_drop)
    document: dict[str, Any] = {
        "granularity": "channel",
        "metric": metric,
        "epochs": tune.epochs,
        "dense_val": dense_val,
        "dense_macs": count_macs(model, data.input_shape).dense,
        "points": [
            {"removed_macs": r, "val": e[0], "params": e[2].pruned.params, "macs": e[2].pruned.macs} if e else
            {"removed_macs": r, "val": None, "params": None, "macs": None}
            for r, e in sorted(trained.items())
        ],
        "reach": found.to_dict(),
        "answer": found.answer,
        "mac_reduction": None,
        "test": None,
        "measure": None,
    }
    if found.answer > 0:
        _, small, pruned = trained[found.answer]
        document["mac_reduction"] = pruned.dense.macs / pruned.pruned.macs
        document["test"] = Evaluator(small, data.test, device=device).evaluate().to_dict()
        document["measure"] = measure_speedup(small, model, data.input_shape, device=device,
                                              batch_sizes=LATENCY_BATCHES)
    return document
