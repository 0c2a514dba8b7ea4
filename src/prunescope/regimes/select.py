"""Model selection by the regime rule: which dense checkpoint of a family prunes best at density d.

Every checkpoint is pruned once to d and recovered with ``seeds`` seeds (the ``one-mask``
pairing of :mod:`prunescope.regimes.study`); its pruned models' mode connectivity and CKA
place it in a regime. The rule chooses from those metrics only, never from the pruned
accuracy: among the connected checkpoints (mc ≥ −ε) the one with the highest output CKA
(regime II-B before II-A), and when none is connected the one with the smallest barrier
(highest mc). The measured pruned error of every member is reported next to the choice, so
that the rule can be judged: the chosen error against the family's best and median.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prunescope.checkpoint import load_checkpoint
from prunescope.data import load_from_spec
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.regimes.classify import DEFAULT_DELTA, DEFAULT_EPSILON, check_thresholds, classify
from prunescope.regimes.connectivity import MIN_POINTS
from prunescope.regimes.study import compare, recover
from prunescope.train import TrainConfig


def _architecture(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec.get(k) for k in ("name", "kwargs", "input_shape", "num_classes", "removed_channels")}


def check_family(specs: Sequence[tuple[Path, dict[str, Any], dict[str, Any]]]) -> None:
    """One architecture and one data set for every ``(path, model_spec, dataset_spec)``, else a UsageError."""
    if len(specs) < 2:
        raise UsageError("--checkpoints needs at least two checkpoints to choose from")
    first_path, first_model, first_data = specs[0]
    for path, model, data in specs[1:]:
        if _architecture(model) != _architecture(first_model):
            raise UsageError(f"checkpoints of different architectures: {first_path} is {first_model.get('name')} "
                             f"{first_model.get('kwargs') or ''}, {path} is {model.get('name')} "
                             f"{model.get('kwargs') or ''}; a family shares one architecture")
        if data.get("name") != first_data.get("name"):
            raise UsageError(f"checkpoints trained on different data: {first_path} on {first_data.get('name')}, "
                             f"{path} on {data.get('name')}; a family shares one data set")


def choose(members: Sequence[dict[str, Any]], epsilon: float, delta: float) -> int:
    """Index of the member the regime rule picks (see the module docstring)."""
    connected = [i for i, m in enumerate(members) if m["mc"] >= -epsilon]
    if connected:
        return max(connected, key=lambda i: members[i]["cka_outputs"])
    return max(range(len(members)), key=lambda i: members[i]["mc"])


def select(
    checkpoints: Sequence[str | Path],
    density: float,
    out: str | Path,
    *,
    seeds: int = 2,
    finetune_epochs: int = 10,
    finetune_lr: float = 0.1,
    allocation: str = "global",
    criterion: str = "magnitude",
    points: int = MIN_POINTS,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    data_dir: str | None = None,
    device: str = "auto",
    trust_factory: bool = False,
    on_member: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure every checkpoint at ``density`` and choose one; the JSON section of ``regimes select``.

    Fine-tuning checkpoints go to ``out/select/<i>/seed<s>.pt`` (a rerun resumes them).
    A model or dataset factory named in a checkpoint is imported only with ``trust_factory``.
    """
    if not 0 < density <= 1:
        raise UsageError(f"density {density:g} is outside (0, 1]: give the fraction of weights kept, e.g. 0.1")
    if seeds < 2:
        raise UsageError(f"--seeds {seeds}: connectivity and CKA compare two models, so give at least 2 seeds")
    check_thresholds(epsilon, delta)
    device = resolve_device(device)
    configs = [TrainConfig(epochs=finetune_epochs, lr=finetune_lr, seed=s) for s in range(seeds)]
    loaded = [(Path(p), load_checkpoint(p, trust_factory=trust_factory)) for p in checkpoints]
    check_family([(p, c.model_spec, c.dataset_spec) for p, c in loaded])
    data = load_from_spec(loaded[0][1].dataset_spec, data_dir=data_dir)
    members = []
    for index, (path, saved) in enumerate(loaded):
        models = []
        for seed, config in enumerate(configs):
            dense = load_checkpoint(path, trust_factory=trust_factory).model.to(device)
            model, _ = recover(dense, data, density, config, allocation=allocation, criterion=criterion,
                               checkpoint=Path(out) / "select" / str(index) / f"seed{seed}.pt",
                               spec=saved.model_spec, device=device)
            models.append(model)
        errors = [1.0 - Evaluator(m, data.val, device=device).evaluate().accuracy for m in models]
        pairs = compare(models, data, points=points, device=device)
        mc = statistics.fmean(p["mc"] for p in pairs)
        cka = statistics.fmean(p["cka_outputs"] for p in pairs)
        dense_error = 1.0 - Evaluator(saved.model, data.val, device=device).evaluate().accuracy
        members.append({"checkpoint": str(path), "dense_error": dense_error, "errors": errors,
                        "error": statistics.fmean(errors), "error_std": statistics.stdev(errors), "mc": mc,
                        "cka_outputs": cka, "regime": classify(mc, cka, epsilon, delta), "pairs": pairs})
        if on_member is not None:
            on_member(index + 1, len(loaded))
    chosen = choose(members, epsilon, delta)
    errors = [m["error"] for m in members]
    best = min(range(len(members)), key=errors.__getitem__)
    return {"density": density, "epsilon": epsilon, "delta": delta, "members": members, "chosen": chosen,
            "best": best, "chosen_error": errors[chosen], "best_error": errors[best],
            "median_error": statistics.median(errors),
            "rank": 1 + sum(e < errors[chosen] for e in errors)}
