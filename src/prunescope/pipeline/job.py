"""``prunescope run``: dense → scan → pick → verify → prune → fine-tune → compare → test once → report.

Every stage is cached in the output directory, so that a rerun (after a crash, Ctrl-C or
a change of later settings) resumes where it stopped:

- ``model.pt`` — the dense model; training resumes from its last epoch.
- ``scan/`` — the Optuna journal of every evaluation; finished ones are reused.
- ``stages/<name>.json`` — the result of a stage, with the settings it depended on; reused
  while those settings are unchanged.
- ``finetune/<method>@<sparsity>/model.pt``, ``scratch/<mode>@<sparsity>/model.pt`` — resumable
  training runs, one per compared sparsity.

Selection (scan, pick, one-shot comparison, fine-tuning with early stop) reads the val
split only; the test split is read once per model, in the last stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from prunescope import hparams, measure
from prunescope.checkpoint import load_checkpoint, plain_state_dict
from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.io import read_json, write_csv, write_json
from prunescope.masks import compute_masks
from prunescope.models import build_model, load_weights, model_spec
from prunescope.pick.choose import choose
from prunescope.pick.crossval import DEFAULT_FOLDS, val_folds, with_threshold
from prunescope.pick.ours import DEFAULT_REFINER
from prunescope.pick.registry import make_allocator
from prunescope.pick.retrain import retrain_cross_validate
from prunescope.pipeline.compare import compare
from prunescope.pipeline.config import RunConfig, check_settings, validate
from prunescope.pipeline.recovered import recovered_channels, recovered_sweep
from prunescope.prunable import unit_share
from prunescope.report.html import write_html
from prunescope.report.schema import document
from prunescope.report.tables import comparison_rows, save_scan
from prunescope.report.verdict import (
    channel_recovered_sentence,
    crossval_clause,
    layer_sentences,
    method_sentence,
    reconstruction_sentence,
    recovered_sentence,
    scratch_sentence,
    selection_sentence,
)
from prunescope.scan import scan
from prunescope.scan.files import JOURNAL_FILE
from prunescope.scores import Score, default_metric
from prunescope.targets import chosen_targets
from prunescope.train import EpochRecord, TrainConfig, TrainResult, finetune, train
from prunescope.train.scratch import scratch_epochs, train_scratch
from prunescope.trust import Trust
from prunescope.units import DEFAULT_CRITERION

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)``; total None while unknown."""


def train_model(
    data: Dataset,
    model_name: str,
    config: TrainConfig,
    out: Path,
    *,
    model_args: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    device: str = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Build ``model_name`` (options ``model_args``) for ``data``, starting from the state dict in file ``weights``
    when given; train it, checkpointing to ``out/model.pt``."""
    spec = model_spec(model_name, data.input_shape, data.num_classes, **(model_args or {}))
    torch.manual_seed(config.seed)
    model = build_model(model_name, data.input_shape, data.num_classes, **(model_args or {}))
    if weights is not None:
        load_weights(model, weights)
    return train(model, data, config, device=device, checkpoint=out / "model.pt", model_spec=spec, on_epoch=on_epoch)


class Stages:
    """Finished stages' JSON results in ``out/stages``, reused while their inputs are unchanged."""

    def __init__(self, out: Path) -> None:
        self.directory = out / "stages"

    def get(self, name: str, inputs: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        path = self.directory / f"{name}.json"
        if path.is_file():
            try:
                saved = read_json(path, str(path))
            except UsageError:
                saved = {}  # a damaged cache entry is recomputed, never trusted
            if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("result"), dict):
                return saved["result"]
        result = compute()
        write_json(path, {"key": key, "result": result})
        return result


def train_config(config: RunConfig, *, epochs: int, lr: float) -> TrainConfig:
    """The training settings of ``config`` (optimizer, batch, regularisation, seed) for ``epochs`` at ``lr``."""
    return TrainConfig(epochs=epochs, optimizer=config.optimizer, lr=lr, batch_size=config.batch_size,
                       weight_decay=config.weight_decay, label_smoothing=config.label_smoothing, seed=config.seed)


def _history(result: TrainResult) -> list[dict[str, Any]]:
    return [asdict(r) for r in result.history]


def _scan(config: RunConfig, model: torch.nn.Module, data: Dataset, out: Path, progress: Progress,
          tolerance: float, granularity: str = "weight") -> Curves:
    # The weight scan ranks by the run's criterion; the channel scan by the default channel importance.
    criterion = config.criterion if granularity == "weight" else DEFAULT_CRITERION[granularity]
    stage = "scan" if granularity == "weight" else f"{granularity} scan"
    storage = out / stage.replace(" ", "-") / JOURNAL_FILE
    return scan(model, data, criterion=criterion, strategy=config.strategy, tolerance=tolerance,
                subset=config.subset, device=config.device, storage=storage, seed=config.seed, granularity=granularity,
                on_trial=lambda done, total: progress(stage, done, total))


CV_MODES = ("val", "retrain")


def _pick(config: RunConfig, curves: Curves, model: torch.nn.Module, data: Dataset, dense_config: TrainConfig,
          out: Path, progress: Progress, tolerance: float, max_drop: float) -> dict[str, Any]:
    """The ensemble pick within ``max_drop`` (a score drop), cross-validated as ``config.cv`` says, verified
    jointly on val."""
    picker = make_allocator("ensemble", max_drop=max_drop)
    if config.cv != "retrain" or not config.folds:
        return choose(curves, picker, model, data, max_drop=max_drop, device=config.device,
                      recalibrate_bn=config.recalibrate_bn, folds=config.folds, seed=config.seed).to_dict()

    def fit(fold_data: Dataset, directory: Path) -> torch.nn.Module:
        return train_model(fold_data, config.model, dense_config, directory, model_args=config.model_args,
                           weights=config.weights, device=config.device,
                           on_epoch=lambda r: progress(f"cv: training {directory.name}", r.epoch,
                                                       config.epochs)).model.eval()

    crossval = retrain_cross_validate(
        data, fit, lambda m, fold_data, directory: _scan(config, m, fold_data, directory, progress, tolerance),
        out / "cv", max_drop=max_drop, k=config.folds, seed=config.seed, device=config.device,
        recalibrate_bn=config.recalibrate_bn)
    allowed = crossval.chosen.threshold
    choice = choose(curves, with_threshold(picker, allowed), model, data, max_drop=allowed, device=config.device,
                    recalibrate_bn=config.recalibrate_bn)
    return replace(choice, crossval=crossval).to_dict()


RUN_METHODS = ("ours", "uniform", "global", "erk", "lamp")  # compared unless told
LANGUAGE_MODEL_METHODS = (*RUN_METHODS, "owl", "alpha")  # LLM allocations beside them, for a language model


def settled(config: RunConfig, data: Dataset) -> RunConfig:
    """``config`` with the settings it leaves to the data filled in, in the user's units.

    A classifier: magnitude masks, ``RUN_METHODS``, tolerances of half an accuracy point, the pick
    cross-validated on 3 val folds. A language model (LLM practice): Wanda masks,
    ``LANGUAGE_MODEL_METHODS`` (OWL and AlphaPruning too), tolerances of 5% more perplexity, no
    cross-validation (it reads per-example accuracy). Settings given explicitly are kept.
    """
    score = Score(default_metric(data.val))
    language = score.lower_is_better
    if language and config.folds:
        raise UsageError("cross-validating the pick reads per-example accuracy, and a language model is scored by "
                         "perplexity: use --folds 0 (the default for a language model)")
    return replace(
        config,
        folds=(0 if language else DEFAULT_FOLDS) if config.folds is None else config.folds,
        criterion=config.criterion or ("wanda" if language else DEFAULT_CRITERION["weight"]),
        methods=config.methods or (LANGUAGE_MODEL_METHODS if language else RUN_METHODS),
        tolerance=score.default_tolerance if config.tolerance is None else config.tolerance,
        max_drop=score.default_tolerance if config.max_drop is None else config.max_drop,
    )


def run(config: RunConfig, out: str | Path = "prunescope-out", *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole pipeline into ``out``; return the result document (also ``out/result.json``).

    Settings left None are :func:`settled` by the data; the document's ``settings`` are the settled ones and
    ``metric`` says what every drop is measured in (accuracy, or a language model's perplexity).
    """
    out = Path(out)
    progress = progress or (lambda stage, done, total: None)
    validate(check_settings(config))  # every setting, before minutes of training
    if config.cv not in CV_MODES:
        raise UsageError(f"unknown cv {config.cv!r}: use val (folds of val, one scan) or retrain (a model per fold)")
    stages = Stages(out)
    limits = {"limit_train": config.limit_train, "limit_val": config.limit_val}
    data = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, **config.data_args,
                        **{k: v for k, v in limits.items() if v is not None})
    config = settled(config, data)
    score = Score(default_metric(data.val))
    # What the scan and the pick bound: score drops (accuracy; log-perplexity), from the user's tolerances.
    tolerance, max_drop = score.allowed(config.tolerance), score.allowed(config.max_drop)
    if config.folds:  # refuse impossible folds before training
        val_folds((data.train if config.cv == "retrain" else data.val).y.numpy(), config.folds, config.seed)
    spec = model_spec(config.model, data.input_shape, data.num_classes, **config.model_args)

    # 1. dense model (resumes from out/model.pt)
    dense_config = train_config(config, epochs=config.epochs, lr=config.lr)
    dense_run = train_model(data, config.model, dense_config, out, model_args=config.model_args,
                            weights=config.weights, device=config.device,
                            on_epoch=lambda r: progress("dense training", r.epoch, config.epochs))
    model = dense_run.model.eval()
    targets, left_dense = chosen_targets(model, data.vocabulary)
    prunable = unit_share(model, "weight", data.input_shape, vocabulary=data.vocabulary).to_dict()

    # 2. sensitivity scan (resumes from the journal)
    curves = _scan(config, model, data, out, progress, tolerance)
    save_scan(out / "scan", curves, model=model, checkpoint=str(out / "model.pt"), model_spec=spec,
              dataset_spec=data.spec, settings={"tolerance": tolerance}, prunable=prunable)

    # 3. how far can the whole model go within max_drop: ensemble pick, cross-validated on folds of
    # val (which chooses its per-layer threshold), verified jointly on val
    # Key later stages on what the curves say, not on the scan's bookkeeping (a scan reloaded from
    # its journal reports other ``reused`` / ``examples`` counts for the same points).
    bookkeeping = ("evaluations", "reused", "evaluated_here", "examples")
    scan_key = {"curves": {k: v for k, v in curves.to_dict().items() if k not in bookkeeping}}
    pick_inputs = {**scan_key, "max_drop": max_drop, "recalibrate_bn": config.recalibrate_bn,
                   "folds": config.folds, "cv": config.cv}
    pick = stages.get("pick", pick_inputs,
                      lambda: _pick(config, curves, model, data, dense_config, out, progress, tolerance, max_drop))
    progress("pick", 1, 1)

    # 4. one-shot comparison of every method over the sparsities (val only)
    levels = sorted({*config.sparsities, config.sparsity})
    rows_done = iter(range(1, len(levels) * len(config.methods) + 1))
    # The refiner's settings are part of what "ours" means: a change of them invalidates the stage.
    inputs = {**scan_key, "levels": levels, "methods": config.methods, "refiner": repr(DEFAULT_REFINER),
              "recalibrate_bn": config.recalibrate_bn}
    one_shot = stages.get("one_shot", inputs, lambda: compare(
        model, data, levels, config.methods, curves=curves, criterion=config.criterion, device=config.device,
        test=False, on_row=lambda row: progress("one-shot comparison", next(rows_done), None),
        recalibrate_bn=config.recalibrate_bn).to_dict())
    # the same rows pruned by layer-wise reconstruction on calibration inputs (no fine-tuning either)
    reconstructed = None
    if config.reconstruct is not None:
        rows_done = iter(range(1, len(levels) * len(config.methods) + 1))
        reconstructed = stages.get(
            "one_shot_reconstructed", {**inputs, "reconstruct": config.reconstruct, "calibration": config.calibration},
            lambda: compare(model, data, levels, config.methods, curves=curves, criterion=config.criterion,
                            device=config.device, test=False, recalibrate_bn=config.recalibrate_bn,
                            reconstruct=config.reconstruct, calibration=config.calibration,
                            on_row=lambda row: progress("one-shot with reconstruction", next(rows_done), None),
                            ).to_dict())

    # 5. fine-tune every method at the compared sparsity, same budget for all
    scores = compute_scores(model, targets, config.criterion, data=data.train)
    tune = train_config(config, epochs=config.finetune_epochs, lr=config.finetune_lr)
    methods = []
    for row in (r for r in one_shot["rows"] if r["sparsity"] == config.sparsity):
        entry: dict[str, Any] = {"method": row["method"], "sparsity": config.sparsity,
                                 "allocation": row["allocation"], "one_shot": {"val": row["val"]},
                                 "error": row["error"]}
        if row["error"] is None:
            pruned = load_checkpoint(out / "model.pt", trust_factory=Trust.of_specs(spec, data.spec)).model
            result = finetune(pruned, data, targets, compute_masks(scores, row["allocation"]), tune,
                              checkpoint=out / "finetune" / f"{row['method']}@{config.sparsity:g}" / "model.pt",
                              model_spec=spec,
                              patience=config.patience, device=config.device,
                              on_epoch=lambda r, m=row["method"]: progress(f"fine-tuning {m}", r.epoch,
                                                                           config.finetune_epochs))
            entry |= {"finetune": {"history": _history(result), "stopped_early": result.stopped_early},
                      "model": result.model}
        methods.append(entry)

    # 6. scratch-E / scratch-B of our mask (Liu et al. 2019)
    ours = next((m for m in methods if m["method"] == "ours" and "model" in m), None)
    scratch = []
    if ours is not None:
        masks = compute_masks(scores, ours["allocation"])
        dense_macs = measure.count_macs(model, data.input_shape).dense
        pruned_macs = measure.count_macs(ours["model"], data.input_shape).effective
        for mode in config.scratch:
            epochs = scratch_epochs(mode, config.epochs, dense_macs, pruned_macs, config.scratch_max_factor)
            result = train_scratch(spec, data, targets, masks, dense_config, mode, dense_macs, pruned_macs,
                                   seed=config.seed + 1, max_factor=config.scratch_max_factor,
                                   checkpoint=out / "scratch" / f"{mode}@{config.sparsity:g}" / "model.pt",
                                   device=config.device,
                                   on_epoch=lambda r, m=mode, e=epochs: progress(f"scratch-{m}", r.epoch, e))
            scratch.append({"mode": mode, "epochs": len(result.history), "allocation_of": "ours",
                            "history": _history(result), "model": result.model})

    # 7. val and test, once per model, and measurements
    def final(model_: torch.nn.Module) -> dict[str, Any]:
        return {"val": Evaluator(model_, data.val, device=config.device).evaluate().to_dict(),
                "test": Evaluator(model_, data.test, device=config.device).evaluate().to_dict(),
                "measure": measure.measure_all(model_, data.input_shape, device=config.device,
                                               batch_sizes=measure.LATENCY_BATCHES)}

    trained = [m for m in methods if "model" in m] + scratch
    evaluated = stages.get("test", {"models": [str(out / "model.pt")] + [_fingerprint(m["model"]) for m in trained]},
                           lambda: {"dense": final(model), "runs": [final(m["model"]) for m in trained]})
    progress("test", 1, 1)
    for entry, result in zip(trained, evaluated["runs"], strict=True):
        entry.pop("model")
        entry |= result
    dense = {**evaluated["dense"], "history": _history(dense_run)}

    # 8. how far after fine-tuning: ours and the best fine-tuned baseline over the recovered sparsities
    recovered = None
    tuned_baselines = [m for m in methods if m["method"] != "ours" and m.get("val")]
    if config.recovered and config.finetune_epochs > 0 and tuned_baselines:
        baseline = max(tuned_baselines, key=lambda m: score.of(m["val"]))["method"]
        recovered = stages.get(
            "recovered",
            {**scan_key, "sparsities": config.recovered_sparsities, "max_drop": max_drop, "baseline": baseline,
             "tune": tune.to_dict(), "recalibrate_bn": config.recalibrate_bn},
            lambda: recovered_sweep(model, data, curves, sparsities=config.recovered_sparsities,
                                    max_drop=max_drop, baseline=baseline, tune=tune, out=out / "recovered",
                                    model_spec=spec, criterion=config.criterion, device=config.device,
                                    recalibrate_bn=config.recalibrate_bn,
                                    progress=lambda message: progress(message, 1, None)))

    verdict = [
        *([f"left dense as LLM pruning does: {', '.join(left_dense)} (prune them with --include)"] if left_dense
          else []),
        *layer_sentences(curves, tolerance, score),
        f"within {score.drop_text(max_drop, sign=False)} the whole model can be pruned to "
        f"{pick['global_sparsity']:.0%} (verified jointly on val: drop "
        f"{score.drop_text(pick['verified']['measured_drop'])} in-sample{crossval_clause(pick['crossval'], score)})",
        method_sentence(config.sparsity, dense["test"], methods, score),
    ]
    if (effort := selection_sentence([r for r in one_shot["rows"] if r["sparsity"] == config.sparsity])):
        verdict.append(effort)
    if (sentence := scratch_sentence(next((m for m in methods if m["method"] == "ours"), None), scratch, score)):
        verdict.append(sentence)
    if reconstructed is not None:
        verdict.append(reconstruction_sentence(config.sparsity, one_shot, reconstructed, score))
    if recovered is not None:
        verdict.append(recovered_sentence(recovered, max_drop, score))
    # 9. the same in whole channels: how many times fewer MACs after fine-tuning, and the speed-up measured there
    structured = None
    if config.granularity == "channel" and config.recovered and config.finetune_epochs > 0:
        channel_curves = _scan(config, model, data, out, progress, tolerance, granularity="channel")
        channel_key = {"curves": {k: v for k, v in channel_curves.to_dict().items() if k not in bookkeeping}}
        structured = stages.get(
            "recovered_channels",
            {**channel_key, "removed_macs": config.removed_macs, "max_drop": max_drop, "tune": tune.to_dict(),
             "recalibrate_bn": config.recalibrate_bn},
            lambda: recovered_channels(model, data, channel_curves, removed_macs=config.removed_macs,
                                       max_drop=max_drop, tune=tune, out=out / "recovered",
                                       model_spec=spec, device=config.device, recalibrate_bn=config.recalibrate_bn,
                                       progress=lambda message: progress(message, 1, None)))
        verdict.append(channel_recovered_sentence(structured, max_drop, score))
    studies = {}
    if config.hparams:  # resumable in out/hparams, like every stage
        studies["hparams"] = hparams.study(hparams.HparamsConfig(
            model=config.model, data=config.data, data_dir=config.data_dir, device=config.device, seed=config.seed),
            out / "hparams", progress=progress).to_dict()
        verdict.append(f"hyperparameters: {studies['hparams']['verdict']['sentence']}")
    doc = document("run", config.to_dict(), model=spec, dataset=data.spec, prunable=prunable, dense=dense,
                   metric=score.metric, scan={"tolerance": tolerance, "curves": curves.to_dict(per_example=False)},
                   pick=pick, sparsity=config.sparsity, one_shot=one_shot, methods=methods, scratch=scratch,
                   one_shot_reconstructed=reconstructed, recovered=recovered,
                   recovered_channels=structured, verdict=verdict, **studies)
    write_json(out / "result.json", doc)
    write_csv(out / "methods.csv", [_method_row(m, score) for m in methods])
    write_csv(out / "one_shot.csv", comparison_rows(one_shot))
    write_html(out, doc)
    return doc


def _fingerprint(model: torch.nn.Module) -> str:
    """Hash of the weights the model computes with (masks baked), however they are stored."""
    digest = hashlib.sha256()
    for name, tensor in plain_state_dict(model).items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _method_row(m: dict[str, Any], score: Score) -> dict[str, Any]:
    """A row of methods.csv: the metric one-shot, on val and test after fine-tuning, and the model's size."""
    row = {"method": m["method"], "sparsity": m["sparsity"], "error": m["error"]}
    if m["error"] is None:
        metric = score.label
        row |= {f"one_shot_val_{metric}": score.shown(score.of(m["one_shot"]["val"])),
                f"val_{metric}": score.shown(score.of(m["val"])), f"test_{metric}": score.shown(score.of(m["test"])),
                **({} if score.lower_is_better else {"test_macro_f1": m["test"]["macro_f1"]}),
                "params_nonzero": m["measure"]["params_nonzero"], "bytes_sparse": m["measure"]["bytes_sparse"],
                "macs_effective": m["measure"]["macs_effective"]}
    return row | {f"sparsity[{k}]": v for k, v in m["allocation"].items()}

