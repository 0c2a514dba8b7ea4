"""The regime study: a phase diagram of temperature T × density d, cell by cell.

For every temperature the dense models are trained (one job each). For every cell (T, d),
``seeds`` pruned models are made: a dense model pruned one-shot to density d
(``allocation``, global magnitude by default, with :func:`prunescope.apply.pruning_masks`)
and recovered by fine-tuning with its mask held (:func:`prunescope.train.finetune`). They
are measured on val: error and loss of every pruned model, the linear path between every
pair of them (mc, BatchNorm statistics recomputed at each point) and the linear CKA of
their outputs and penultimate features.
Optionally (``scratch``) the same mask is trained from scratch for the dense model's
epochs (Liu et al. 2019's scratch-E) next to it.

Which two models are compared (``pairing``):

- ``one-mask`` (default, as the authors' code does): one dense model per temperature (seed 0),
  pruned once, and that one mask recovered with ``seeds`` different seeds (data order);
  every pair of recovered models is compared. Zhou et al.'s released scripts train one
  dense model (``train_seed_lst=[1]``), prune it, retrain with seeds 1, 2, 3 at the dense
  model's learning rate and measure the pairs (1, 2), (1, 3), (2, 3). The line then stays in
  that mask's sparse subspace. Recovery should move the models (the paper retrains for as
  many epochs as training, at lr 0.1): with a tiny learning rate every cell is connected.
- ``seeds``: pruned models from dense models trained with different seeds (their masks
  differ; pruned weights are zeros and the plain weights are interpolated, so points between
  keep the union of both masks). Independently trained networks are permuted copies of one
  another, so a straight line between them tends to cross a barrier whatever the
  temperature (in a trial with digits' MLP every cell above chance was regime I), which
  hides the transitions the model is about.

Every job is an Optuna trial in ``out/study.journal`` (or ``storage``;
:mod:`prunescope.regimes.trials`): a rerun skips finished jobs, and the workers of any
:mod:`prunescope.trials` executor (``local``, ``processes``, ``ray``) share the queue.
Regimes are assigned from the stored measurements when the summary is made, so ε and δ can
be changed without recomputing anything.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from prunescope.apply import pruning_masks
from prunescope.checkpoint import load_checkpoint
from prunescope.data import load_dataset
from prunescope.data.types import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.masks import make_permanent
from prunescope.models import build_model, model_spec
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.regimes.cka import representations, similarity
from prunescope.regimes.classify import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    check_directions,
    check_thresholds,
    classify,
    walk,
)
from prunescope.regimes.connectivity import MIN_POINTS, linear_path
from prunescope.regimes.trials import JobObjective, open_jobs, results, run_jobs, study_path
from prunescope.targets import find_targets
from prunescope.train import TrainConfig, finetune, train, train_scratch
from prunescope.trials.points import Execution, QueuedStudy
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from prunescope.trust import Trust

TEMPERATURES = ("epochs", "batch-size", "lr", "sam-rho")
PAIRINGS = ("seeds", "one-mask")


@dataclass(frozen=True)
class RegimeSettings:
    """Everything a regime study depends on; the identity of its journal.

    ``values``: the temperature's settings (epochs, batch sizes, learning rates or SAM
    radii); ``densities``: fractions of prunable weights kept, in (0, 1]. The dense models
    train with ``epochs`` / ``lr`` / ``batch_size`` / ``optimizer`` except for the swept
    one; recovery fine-tunes ``finetune_epochs`` at ``finetune_lr`` with SGD (cosine schedule).
    """

    model: str = "mlp"
    data: str = "digits"
    data_dir: str | None = None
    limit_train: int | None = None
    val_fraction: float = 0.1
    temperature: str = "epochs"
    values: tuple[float, ...] = (1, 3, 10, 30)
    densities: tuple[float, ...] = (0.02, 0.05, 0.1, 0.3)
    seeds: int = 2
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    optimizer: str = "sgd"
    finetune_epochs: int = 10
    finetune_lr: float = 0.1
    allocation: str = "global"
    criterion: str = "magnitude"
    pairing: str = "one-mask"
    points: int = MIN_POINTS
    bn_batches: int = 20
    scratch: bool = False
    seed: int = 0
    dense_seed: int = 0  # one-mask pairing: the dense model's seed (another value replicates the whole diagram)
    recovery_temperature: bool = False  # the temperature also sets the recovery (see recovery_config)
    device: str = "auto"  # resolved by each worker where it runs

    def __post_init__(self) -> None:
        check(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change results (not where the data lives, not the device)."""
        return {k: v for k, v in asdict(self).items() if k not in ("data_dir", "device")}

    def temperatures(self) -> list[float]:
        """``values`` in order of rising temperature (a smaller batch is a higher temperature)."""
        return sorted(self.values, reverse=self.temperature == "batch-size")

    def dense_seeds(self) -> range:
        """Seeds of the dense models: one per pruned model, or only ``dense_seed`` when they share one mask."""
        return range(self.seeds) if self.pairing == "seeds" else range(self.dense_seed, self.dense_seed + 1)

    def dense_config(self, value: float, seed: int) -> TrainConfig:
        """Training settings of the dense model at temperature ``value``."""
        config = TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=seed,
                             optimizer=self.optimizer)
        if self.temperature == "epochs":
            return replace(config, epochs=int(value))
        if self.temperature == "batch-size":
            return replace(config, batch_size=int(value))
        if self.temperature == "lr":
            return replace(config, lr=float(value))
        return replace(config, sam_rho=float(value))

    def recovery_config(self, seed: int, value: float | None = None) -> TrainConfig:
        """The fine-tuning that recovers a pruned model (``finetune_epochs``, ``finetune_lr``) with ``seed``.

        With ``recovery_temperature`` the swept setting of the cell's temperature ``value`` also
        sets the recovery (as the paper's code retrains at the dense model's settings): its
        epochs, learning rate, batch size or SAM radius.
        """
        config = TrainConfig(epochs=self.finetune_epochs, lr=self.finetune_lr, batch_size=self.batch_size, seed=seed)
        if not self.recovery_temperature or value is None:
            return config
        if self.temperature == "epochs":
            return replace(config, epochs=int(value))
        if self.temperature == "batch-size":
            return replace(config, batch_size=int(value))
        if self.temperature == "lr":
            return replace(config, lr=float(value))
        return replace(config, optimizer="sam", sam_rho=float(value))


def check(settings: RegimeSettings) -> None:
    """Refuse settings that cannot make a phase diagram, with a one-line UsageError."""
    s = settings
    if s.seeds < 2:
        raise UsageError(f"--seeds {s.seeds}: connectivity and CKA compare two models, so give at least 2 seeds")
    if s.temperature not in TEMPERATURES:
        raise UsageError(f"unknown --temperature {s.temperature!r}: use one of {', '.join(TEMPERATURES)}")
    if s.pairing not in PAIRINGS:
        raise UsageError(f"unknown --pairing {s.pairing!r}: use one of {', '.join(PAIRINGS)}")
    if s.allocation not in ALLOCATIONS:
        raise UsageError(f"unknown --allocation {s.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
    if not s.values or len(set(s.values)) != len(s.values):
        raise UsageError("--values needs distinct temperatures, e.g. 2,5,10,20")
    if not s.densities or len(set(s.densities)) != len(s.densities):
        raise UsageError("--densities needs distinct densities, e.g. 0.05,0.1,0.2,0.5")
    for d in s.densities:
        if not 0 < d <= 1:
            raise UsageError(f"density {d:g} is outside (0, 1]: give the fraction of weights kept, e.g. 0.1")
    if s.temperature == "sam-rho" and not s.optimizer.startswith("sam"):
        raise UsageError(f"--temperature sam-rho needs --optimizer sam (SAM around SGD) or sam-adamw: "
                         f"{s.optimizer} has no rho")
    if s.temperature in ("epochs", "batch-size") and any(v != int(v) or v < 1 for v in s.values):
        raise UsageError(f"--values of {s.temperature} must be positive whole numbers, got {list(s.values)}")
    if s.temperature in ("lr", "sam-rho") and any(not v >= 0 or (s.temperature == "lr" and v == 0)
                                                  for v in s.values):
        raise UsageError(f"--values of {s.temperature} must be positive numbers, got {list(s.values)}")
    if s.dense_seed < 0:
        raise UsageError(f"--dense-seed {s.dense_seed}: a seed is a whole number of at least 0")
    if s.bn_batches < 1:
        raise UsageError(f"--bn-batches {s.bn_batches}: BatchNorm recomputation needs at least one batch")
    if s.points < MIN_POINTS:
        raise UsageError(f"--points {s.points}: the line needs at least {MIN_POINTS} points")
    for value in s.values:  # every TrainConfig the study will build, checked before any work
        s.dense_config(value, 0)
        s.recovery_config(0, value)


# --------------------------------------------------------------------------- jobs


def _key(value: float, density: float | None = None, seed: int | None = None) -> str:
    return f"dense T={value:g} seed={seed}" if density is None else f"cell T={value:g} d={density:g}"


def _parse(key: str) -> tuple[str, dict[str, float]]:
    kind, *parts = key.split()
    return kind, {k: float(v) for k, v in (p.split("=") for p in parts)}


@functools.cache
def dataset_of(settings: RegimeSettings) -> Dataset:
    options = {"limit_train": settings.limit_train} if settings.limit_train else {}
    return load_dataset(settings.data, data_dir=settings.data_dir, val_fraction=settings.val_fraction,
                        seed=settings.seed, **options)


def _dense_path(out: Path, value: float, seed: int) -> Path:
    return out / "dense" / f"T={value:g}" / f"seed{seed}" / "model.pt"


def model_spec_of(settings: RegimeSettings, data: Dataset) -> dict[str, Any]:
    return model_spec(settings.model, data.input_shape, data.num_classes)


def _error(model: torch.nn.Module, data: Dataset, device: str) -> dict[str, float]:
    """Val error and loss (what the study decides on) and test error (what judges the decisions)."""
    metrics = Evaluator(model, data.val, device=device).evaluate()
    test = Evaluator(model, data.test, device=device).evaluate()
    return {"error": 1.0 - metrics.accuracy, "loss": metrics.loss, "test_error": 1.0 - test.accuracy}


def _train_dense(settings: RegimeSettings, out: Path, value: float, seed: int) -> dict[str, Any]:
    data = dataset_of(settings)
    torch.manual_seed(seed)
    model = build_model(settings.model, data.input_shape, data.num_classes)
    result = train(model, data, settings.dense_config(value, seed), device=settings.device,
                   checkpoint=_dense_path(out, value, seed), model_spec=model_spec_of(settings, data))
    return _error(result.model, data, settings.device) | {"epochs": len(result.history)}


def recover(dense: torch.nn.Module, data: Dataset, density: float, config: TrainConfig, *, allocation: str,
            criterion: str, checkpoint: Path, spec: dict[str, Any], device: str,
            mask_seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """``dense`` pruned one-shot to ``density`` (changed in place) and fine-tuned with its mask held.

    Returns the recovered model (plain parameters, pruned weights zero) and the keep-masks.
    ``checkpoint`` makes the fine-tuning resumable.
    """
    targets = find_targets(dense)
    sparsities = allocate(allocation, dense, targets, 1.0 - density)
    masks = pruning_masks(dense, targets, sparsities, criterion=criterion, data=data, seed=mask_seed)
    result = finetune(dense, data, targets, masks, config, device=device, checkpoint=checkpoint, model_spec=spec)
    return make_permanent(result.model), masks


def compare(models: Sequence[torch.nn.Module], data: Dataset, *, points: int, device: str, seed: int = 0,
            bn_batches: int = 20) -> list[dict[str, Any]]:
    """mc (linear path on val, BN recomputed on ``bn_batches`` train batches) and CKA of every pair of ``models``."""
    reps = [representations(m, data.val, device=device) for m in models]
    pairs = []
    for i, j in itertools.combinations(range(len(models)), 2):
        path = linear_path(models[i], models[j], data.val, data.train, points=points, device=device, seed=seed,
                           bn_batches=bn_batches)
        pairs.append({"pair": [i, j], **similarity(reps[i], reps[j]), "path": path.to_dict(), "mc": path.mc})
    return pairs


def _measure_cell(settings: RegimeSettings, out: Path, value: float, density: float) -> dict[str, Any]:
    data = dataset_of(settings)
    spec = model_spec_of(settings, data)
    device = resolve_device(settings.device)
    models, scratch = [], []
    for seed in range(settings.seeds):
        source = seed if settings.pairing == "seeds" else settings.dense_seed
        trust = Trust.of_specs(spec, data.spec)  # the study's own models: only their factories are imported
        dense = load_checkpoint(_dense_path(out, value, source), trust_factory=trust).model.to(device)
        model, masks = recover(dense, data, density, settings.recovery_config(seed, value),
                               allocation=settings.allocation, criterion=settings.criterion, spec=spec,
                               device=device, mask_seed=source,
                               checkpoint=out / "cells" / f"T={value:g}" / f"d={density:g}" / f"seed{seed}.pt")
        models.append(model)
        if settings.scratch:
            trained = train_scratch(spec, data, None, masks, settings.dense_config(value, seed), "E", None, None,
                                    seed=1000 + seed, device=device)
            scratch.append(_error(trained.model, data, device)["error"])
    measured = [_error(m, data, device) for m in models]
    return {"temperature": value, "density": density, "errors": [m["error"] for m in measured],
            "losses": [m["loss"] for m in measured], "test_errors": [m["test_error"] for m in measured],
            "scratch_errors": scratch,
            "pairs": compare(models, data, points=settings.points, device=device, seed=settings.seed,
                             bn_batches=settings.bn_batches)}


def run_job(settings: RegimeSettings, out: str, key: str) -> dict[str, Any]:
    """Run job ``key`` (a dense model or a cell) of the study in ``out``; picklable for workers."""
    kind, values = _parse(key)
    if kind == "dense":
        return _train_dense(settings, Path(out), values["T"], int(values["seed"]))
    return _measure_cell(settings, Path(out), values["T"], values["d"])


# --------------------------------------------------------------------------- the study


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values for it)."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None


def summarise(settings: RegimeSettings, dense: dict[str, dict], cells: dict[str, dict], *,
              epsilon: float = DEFAULT_EPSILON, delta: float = DEFAULT_DELTA,
              start: float | None = None) -> dict[str, Any]:
    """The JSON section of the study: every cell with its regime, and the advice per density.

    ``start``: the temperature the direction walk starts from at each density (default:
    the middle of the grid, rounding down).
    """
    check_thresholds(epsilon, delta)
    temperatures = settings.temperatures()
    if start is not None and start not in temperatures:
        raise UsageError(f"--start {start:g} is not one of the --values {', '.join(f'{v:g}' for v in temperatures)}")
    first = temperatures.index(start) if start is not None else (len(temperatures) - 1) // 2
    rows = []
    for value in temperatures:
        for density in settings.densities:
            cell = cells[_key(value, density)]
            error, error_std = _mean_std(cell["errors"])
            loss, _ = _mean_std(cell["losses"])
            mc, mc_std = _mean_std([p["mc"] for p in cell["pairs"]])
            cka, cka_std = _mean_std([p["cka_outputs"] for p in cell["pairs"]])
            features, _ = _mean_std([p["cka_features"] for p in cell["pairs"]])
            test_error, test_error_std = _mean_std(cell.get("test_errors", []))  # absent from older journals
            scratch, scratch_std = _mean_std(cell["scratch_errors"])
            dense_runs = [dense[_key(value, seed=s)] for s in settings.dense_seeds()]
            dense_error, _ = _mean_std([d["error"] for d in dense_runs])
            dense_test_error, _ = _mean_std([d.get("test_error") for d in dense_runs])
            rows.append({
                "temperature": value, "density": density, "error": error, "error_std": error_std, "loss": loss,
                "mc": mc, "mc_std": mc_std, "cka_outputs": cka, "cka_outputs_std": cka_std,
                "cka_features": features, "regime": classify(mc, cka, epsilon, delta), "dense_error": dense_error,
                "dense_test_error": dense_test_error, "test_error": test_error, "test_error_std": test_error_std,
                "scratch_error": scratch if cell["scratch_errors"] else None,
                "scratch_error_std": scratch_std if cell["scratch_errors"] else None,
                "errors": cell["errors"], "test_errors": cell.get("test_errors", []), "pairs": cell["pairs"],
            })
    advice = []
    for density in settings.densities:
        column = [r for r in rows if r["density"] == density]
        regimes = [r["regime"] for r in column]
        errors = [r["error"] for r in column]
        spreads = [r["error_std"] or 0.0 for r in column]
        route = walk(regimes, first)
        best = min(range(len(column)), key=errors.__getitem__)
        chosen = route.chosen
        checks = check_directions(temperatures, regimes, errors, spreads)
        advice.append({
            "density": density, "start": temperatures[route.start],
            "advice_at_start": {"I": "raise", "II-A": "lower", "II-B": "keep"}[regimes[route.start]],
            "walk": [temperatures[i] for i in route.path], "chosen": temperatures[chosen], "reason": route.reason,
            "best": temperatures[best], "chosen_error": errors[chosen], "chosen_error_std": spreads[chosen],
            "best_error": errors[best], "best_error_std": spreads[best],
            "regret": errors[chosen] - errors[best],
            "within_spread": errors[chosen] - errors[best] <= max(spreads[chosen], spreads[best]),
            "checks": [c.to_dict() for c in checks],
        })
    return {"temperature": settings.temperature, "temperatures": temperatures,
            "densities": list(settings.densities), "epsilon": epsilon, "delta": delta, "pairing": settings.pairing,
            "seeds": settings.seeds, "dense": [{"key": k, **v} for k, v in sorted(dense.items())],
            "cells": rows, "advice": advice}


def study(
    settings: RegimeSettings,
    out: str | Path,
    *,
    workers: int = 1,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    start: float | None = None,
    on_job: Callable[[str, int, int], None] | None = None,
    storage: str | os.PathLike[str] | None = None,
    study_name: str = "regimes",
    executor_kind: str | None = None,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> dict[str, Any]:
    """Run (or resume) the study in ``out`` and return its summary (see :func:`summarise`).

    ``on_job(key, done, total)`` is called as jobs finish. Nothing is written before the
    settings and thresholds are checked. ``storage``: where the jobs' study lives (default
    ``out/study.journal``; a database URL is shared by machines, which must also share
    ``out``, where the models are), ``study_name`` its name there. ``executor_kind`` /
    ``workers`` / ``ray_address`` / ``gpus_per_worker`` / ``heartbeat_interval`` /
    ``grace_period``: who runs the jobs, as for :func:`prunescope.scan.scan`.
    """
    check_thresholds(epsilon, delta)
    temperatures = settings.temperatures()
    if start is not None and start not in temperatures:
        raise UsageError(f"--start {start:g} is not one of the --values {', '.join(f'{v:g}' for v in temperatures)}")
    execution = Execution(executor_kind, workers, ray_address, gpus_per_worker, heartbeat_interval, grace_period)
    execution.check()
    dataset_of(settings)  # a missing data set fails here, before the output directory is touched
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory")
    dense_keys = [_key(v, seed=s) for v in temperatures for s in settings.dense_seeds()]
    cell_keys = [_key(v, d) for v in temperatures for d in settings.densities]
    place = execution.place(study_path(out) if storage is None else os.fspath(storage), study_name)
    opened = open_jobs(place, json.loads(json.dumps(settings.identity())))
    objective = JobObjective(tuple(dense_keys + cell_keys), functools.partial(run_job, settings, str(out)))
    total = len(dense_keys) + len(cell_keys)
    with QueuedStudy(opened, place, objective, execution) as jobs:
        done = len(results(jobs).keys() & set(dense_keys + cell_keys))

        def finished(key: str) -> None:
            nonlocal done
            done += 1
            if on_job is not None:
                on_job(key, done, total)

        dense = run_jobs(jobs, dense_keys, finished)  # the cells load the dense models: these first
        cells = run_jobs(jobs, cell_keys, finished)
    return summarise(settings, dense, cells, epsilon=epsilon, delta=delta, start=start)
