"""How far the whole model goes *after fine-tuning*: the answer users act on.

For ``ours`` and one baseline, at every sparsity of the sweep: the method's allocation at
exactly that global sparsity (:func:`prunescope.compare.compare`, val only), fine-tuned
from the dense weights with the same budget for both, then evaluated on val. Then, for
``ours``, :func:`prunescope.pick.reach.reach` widens the sweep until it brackets the bound
and bisects between the last sparsity within it and the first outside. The test split is
read once, for the model at the answer. For comparison, gradual (AGP, cubic) pruning to
the same sparsity with the same total epochs.

Every fine-tuning run is checkpointed under ``out/<method>@<sparsity>/``, so a rerun
resumes; nothing here selects on test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from prunescope.compare import compare
from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data.types import Dataset
from prunescope.evaluate import Evaluator
from prunescope.masks import compute_masks
from prunescope.pick.baselines import allocate
from prunescope.pick.reach import reach
from prunescope.targets import find_targets
from prunescope.train import TrainConfig, finetune
from prunescope.train.gradual import gradual_prune, polynomial_schedule

Progress = Callable[[str], None]


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
    """Fine-tuned val accuracy of ``ours`` and ``baseline`` per sparsity, ours' bisected answer, test once there.

    Returns a JSON-ready dict: ``curves`` {method: [{sparsity, val}]}, ``reach`` (the sweep,
    widening and bisection of ``ours``), ``answer``, ``test`` at the answer, ``gradual`` at the
    answer (val and test), and ``epochs`` (the fine-tuning budget of every point).
    """
    progress = progress or (lambda _message: None)
    targets = find_targets(model)
    scores = compute_scores(model, targets, criterion, data=data.train)
    dense_val = Evaluator(model, data.val, device=device).evaluate().accuracy
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
                    Evaluator(result.model, data.val, device=device).evaluate().accuracy,
                    result.model,
                )
        return recovered[method, sparsity]

    def ours_at(sparsity: float) -> float:
        result = fine_tuned("ours", sparsity)
        return 0.0 if result is None else result[0]

    found = reach(ours_at, dense_val, sparsities, max_drop)
    for sparsity in sorted(found.points):
        fine_tuned(baseline, sparsity)
    answer = found.answer
    document: dict[str, Any] = {
        "epochs": tune.epochs,
        "baseline": baseline,
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
        document["gradual"] = _gradual(model, data, answer, tune, out / "gradual", model_spec, criterion, device)
    return document


def _gradual(
    model: nn.Module,
    data: Dataset,
    sparsity: float,
    tune: TrainConfig,
    out: Path,
    model_spec: dict,
    criterion: str,
    device: str,
) -> dict[str, Any]:
    """AGP (cubic) to ``sparsity`` with global magnitude allocation, same total epochs as one fine-tuning run."""
    steps = max(1, min(tune.epochs, 5))
    per_step = TrainConfig(**{**asdict(tune), "epochs": max(1, tune.epochs // steps)})
    pruned = copy.deepcopy(model)
    result = gradual_prune(
        pruned,
        data,
        lambda s: allocate("global", pruned, find_targets(pruned), s),
        polynomial_schedule(0.0, sparsity, steps),
        per_step,
        criterion=criterion,
        device=device,
        checkpoint_dir=out,
        model_spec=model_spec,
    )
    return {
        "sparsity": sparsity,
        "steps": steps,
        "epochs": steps * per_step.epochs,
        "val": Evaluator(result.model, data.val, device=device).evaluate().to_dict(),
        "test": Evaluator(result.model, data.test, device=device).evaluate().to_dict(),
    }
