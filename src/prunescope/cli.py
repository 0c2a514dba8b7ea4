"""The ``prunescope`` command. Every command is a thin call into the library."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from prunescope import cli_input
from prunescope import cli_study as study_options
from prunescope import models as zoo
from prunescope.apply import export, load_allocation
from prunescope.checkpoint import Checkpoint, load_checkpoint
from prunescope.cli_hparams import hparams_command
from prunescope.cli_progress import progress_updates
from prunescope.cliargs import (
    BatchSize,
    Calibration,
    DataArg,
    DataChoice,
    Device,
    LabelSmoothing,
    LimitTrain,
    LimitVal,
    ModelArg,
    Optimizer,
    Reconstruct,
    ReconstructChoice,
    ReconstructFallback,
    WeightDecay,
    assignments,
    data_choice,
    reconstruct_choice,
)
from prunescope.compare import CHANNEL_METHODS, METHODS, compare
from prunescope.criteria import CRITERIA
from prunescope.data import Dataset, available_datasets, describe_dataset, load_dataset, load_from_spec
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.html import write_html
from prunescope.io import write_json
from prunescope.masks import check_sparsity, global_sparsity
from prunescope.measure import measure_speedup
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.choose import choose
from prunescope.pick.crossval import DEFAULT_FOLDS
from prunescope.pick.registry import ALLOCATORS, PICKERS, make_allocator
from prunescope.pipeline import run, train_model
from prunescope.prune import PickSettings, prune_channels_and_recover, prune_weights_and_recover, read_channel_pick
from prunescope.regimes_cli import app as regimes_app
from prunescope.report import (
    choice_table,
    comparison_table,
    listing_table,
    run_table,
    save_scan,
    scan_table,
    sweep_table,
    write_comparison,
    write_sweep,
)
from prunescope.report_hparams import shift_table
from prunescope.results import document, load_result
from prunescope.runconfig import load_config
from prunescope.scan import GRANULARITIES, STRATEGIES, scan
from prunescope.scan.files import JOURNAL_FILE, SCAN_FILE, load_scan
from prunescope.structured.export import comparable_modules, dense_reference, load_model_file
from prunescope.structured.importance import IMPORTANCES
from prunescope.sweep import sweep
from prunescope.targets import effective_weight, find_targets
from prunescope.train import (
    DEFAULT_BN_BATCHES,
    TrainConfig,
    gradual_prune,
    iterative_schedule,
    polynomial_schedule,
    train_scratch,
)
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from prunescope.trust import Trust, check_spec
from prunescope.units import criterion_for
from prunescope.verdict import selection_sentence, small_val_warning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="How far can each layer, and the whole model, be pruned?",
)
console = Console()
if not console.is_terminal:
    console.width = max(console.width, 140)  # wide tables stay readable in logs and pipes

Out = Annotated[Path, typer.Option(help="Output directory; rerunning with the same one resumes.",
                                   callback=cli_input.output_dir)]
DataDir = Annotated[
    str | None, typer.Option(help="Folder with the dataset files (or set PRUNESCOPE_DATA_DIR).", show_default=False,
                             callback=cli_input.data_dir)
]
Seed = Annotated[int, typer.Option(help="Seed of the split, the initialisation and the shuffling.")]
Criterion = Annotated[str, typer.Option(help=f"Which weights go first: {', '.join(CRITERIA)}.")]
Allocation = Annotated[str, typer.Option(help=f"How the global sparsity is split: {', '.join(ALLOCATIONS)}.")]
Sparsities = Annotated[str, typer.Option(help="Comma-separated global sparsities in [0, 1).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
DEFAULT_SPARSITIES_TEXT = "0.5,0.7,0.8,0.9,0.95"
Points = Annotated[float | None, typer.Option(help="Allowed drop in points of the metric (0.5 = half a point).")]
Include = Annotated[list[str] | None, typer.Option(help="Glob of layers to prune (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="Glob of layers to keep dense (repeatable).")]
CheckpointOption = Annotated[Path, typer.Option(help="A checkpoint written by prunescope train.")]
Granularity = Annotated[str, typer.Option(help="weight (unstructured) or channel (coupled channel groups, physically "
                                                "removable).")]
UnitCriterion = Annotated[str | None, typer.Option(
    help=f"What goes first: weights ({', '.join(CRITERIA)}; default magnitude) or, with --granularity channel, "
         f"channels ({', '.join(IMPORTANCES)}; default l2, or the importance of the pick's scan).",
    show_default=False)]
ImportanceAlias = Annotated[str | None, typer.Option(hidden=True, help="Same as --criterion (channels).")]
RecalibrateBN = Annotated[int | None, typer.Option(help=f"Re-estimate BatchNorm statistics of every pruned model on "
                                                        f"this many batches of 128 training examples, the same for "
                                                        f"every method (0: off). Default: {DEFAULT_BN_BATCHES} for a "
                                                        f"model with BatchNorm, off without.", show_default=False)]
TrustFactoryOption = Annotated[bool, typer.Option(help="Import a package.module:function model or dataset factory "
                                                       "named in an input file (that runs its code): only for files "
                                                       "you trust.")]




def _parse_sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--sparsities {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.9") from None
    if not values:
        raise UsageError("--sparsities is empty: give e.g. 0.5,0.7,0.9")
    return [check_sparsity(value, "--sparsities:") for value in values]  # before any work that would be lost


def _at_least(option: str, value: int | None, minimum: int) -> None:
    """UsageError unless ``value`` (an integer option, None when not given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")


def _check_choice(option: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


@contextmanager
def _progress(description: str, total: int | None):
    """One progress task; yields a callback that advances it by one step."""
    with progress_updates(console) as update:
        done = 0

        def advance(*_: object) -> None:
            nonlocal done
            done += 1
            update(description, done, total)

        yield advance


@app.command("run")
def run_command(
    out: Out = Path("prunescope-out"),
    config: Annotated[Path | None, typer.Option(help="TOML file with any of run's settings.")] = None,
    model: Annotated[str | None, typer.Option(help="Zoo model or package.module:factory [mlp].")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name or package.module:factory [digits].")] = None,
    data_dir: DataDir = None,
    model_arg: ModelArg = None,
    data_arg: DataArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    epochs: Annotated[int | None, typer.Option(help="Dense training epochs [30].")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw [sgd].")] = None,
    lr: Annotated[float | None, typer.Option(help="Dense peak learning rate [0.05].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size [64].")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay [5e-4].")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing [0].")] = None,
    sparsity: Annotated[float | None, typer.Option(help="Global sparsity every method is compared at [0.9].")]
    = None,
    sparsities: Annotated[str | None, typer.Option(help="One-shot sparsities for the curves per method.")] = None,
    methods: Annotated[str | None, typer.Option(help=f"Comma-separated: {', '.join(METHODS)}.")] = None,
    criterion: Annotated[str | None, typer.Option(help=f"{', '.join(CRITERIA)} [magnitude].")] = None,
    folds: Annotated[int | None, typer.Option(help="Cross-validate the pick on this many folds (0: off) [3].")]
    = None,
    cv: Annotated[str | None, typer.Option(help="val (folds of val, from the one scan) or retrain (a model trained "
                                                "and scanned per fold of train: training variance too) [val].")]
    = None,
    max_drop: Points = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs per method [10].")] = None,
    recalibrate_bn: RecalibrateBN = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of split, initialisation and shuffling [0].")] = None,
    hparams: Annotated[bool | None, typer.Option("--hparams", help="Also run the hyperparameter study "
                                                                    "(prunescope hparams' defaults).")] = None,
    granularity: Annotated[str | None, typer.Option(help="channel: also how many times fewer MACs removing whole "
                                                         "channels reaches after fine-tuning, with its measured "
                                                         "speed-up [weight].")] = None,
    trust_factory: TrustFactoryOption = False,
) -> None:
    """The whole job: dense → scan → pick → verify → prune → fine-tune → compare → test once → report."""
    overrides = {
        "model": model, "data": data, "data_dir": data_dir, "epochs": epochs, "sparsity": sparsity,
        "sparsities": _parse_sparsities(sparsities) if sparsities else None,
        "methods": [m.strip() for m in methods.split(",")] if methods else None, "criterion": criterion,
        "folds": folds, "cv": cv, "max_drop": _points(max_drop), "finetune_epochs": finetune_epochs,
        "device": device, "seed": seed, "recalibrate_bn": recalibrate_bn, "hparams": hparams,
        "granularity": granularity,
        "model_args": assignments("--model-arg", model_arg) or None,
        "data_args": assignments("--data-arg", data_arg) or None, "limit_train": limit_train, "limit_val": limit_val,
        "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
    }
    settings = load_config(config, overrides)
    if config is not None:  # a factory named only in the config file is a name read from a file
        trust = Trust(everything=trust_factory, names=frozenset(n for n in (model, data) if n))
        check_spec({"name": settings.model}, "model", f"config file {config}", trust)
        check_spec({"name": settings.data}, "dataset", f"config file {config}", trust)
    check_sparsity(settings.sparsity, "--sparsity")
    _check_choice("--criterion", settings.criterion, list(CRITERIA))
    with _stage_progress() as progress:
        doc = run(settings, out, progress=progress)
    console.print(run_table(doc))
    _warn_if_val_is_small(doc["dense"]["val"]["n"], min(settings.tolerance, settings.max_drop) or settings.tolerance)
    for sentence in doc["verdict"]:
        console.print(f"• {sentence}", highlight=False)
    console.print(f"wrote {out / 'report.html'}, {out / 'result.json'}, CSVs and checkpoints in {out}")


@contextmanager
def _stage_progress():
    """One progress task per pipeline stage, kept on screen."""
    with progress_updates(console, transient=False) as update:
        yield update


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option(help="Zoo model or package.module:factory.")] = "mlp",
    data: Annotated[str, typer.Option(help="Dataset name or package.module:factory.")] = "digits",
    data_dir: DataDir = None,
    model_arg: ModelArg = None,
    data_arg: DataArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    out: Out = Path("runs/model"),
    epochs: Epochs = 10,
    optimizer: Annotated[str, typer.Option(help="sgd, adamw, sam (SAM around SGD) or sam-adamw.")] = "sgd",
    sam_rho: Annotated[float | None, typer.Option(help="SAM radius rho (optimizer sam*) [0.05].")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 0.05,
    batch_size: BatchSize = 128,
    weight_decay: WeightDecay = 5e-4,
    label_smoothing: LabelSmoothing = 0.0,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Train a dense model; checkpoints every epoch to OUT/model.pt and resumes from it."""
    config = TrainConfig(
        epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        label_smoothing=label_smoothing, seed=seed, sam_rho=sam_rho,
    )
    choice = data_choice(data_dir, data_arg, limit_train, limit_val)
    dataset = load_dataset(data, data_dir=data_dir, seed=seed, **choice.overrides())
    with _progress(f"training {model}", epochs) as epoch_done:
        result = train_model(dataset, model, config, out, model_args=assignments("--model-arg", model_arg),
                             device=device, on_epoch=epoch_done)
    columns = ["epoch", "train loss", "val accuracy", "val macro-F1", "val loss", "seconds"]
    rows = [
        [str(r.epoch), f"{r.train_loss:.4f}", f"{r.val_accuracy:.2%}", f"{r.val_macro_f1:.3f}", f"{r.val_loss:.4f}",
         f"{r.seconds:.1f}"]
        for r in result.history
    ]
    console.print(listing_table(f"{model} on {data}", columns, rows))
    console.print(f"checkpoint: {out / 'model.pt'}")


@app.command("sweep")
def sweep_command(
    checkpoint: CheckpointOption,
    sparsities: Sparsities = DEFAULT_SPARSITIES_TEXT,
    criterion: Criterion = "magnitude",
    allocation: Allocation = "uniform",
    include: Include = None,
    exclude: Exclude = None,
    subset: Annotated[int | None, typer.Option(help="Evaluate on a seeded subset of this many examples.")] = None,
    recalibrate_bn: RecalibrateBN = None,
    reconstruct: Reconstruct = None,
    calibration: Calibration = None,
    reconstruct_fallback: ReconstructFallback = False,
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    out: Out = Path("prunescope-out"),
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
) -> None:
    """One-shot prune at each sparsity, evaluate on val, restore; print and save a table."""
    levels = _parse_sparsities(sparsities)
    _check_choice("--criterion", criterion, list(CRITERIA))
    _check_choice("--allocation", allocation, ALLOCATIONS)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback)
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    with _progress("sweeping", len(levels) + 1) as point_done:
        result = sweep(
            saved.model, dataset, levels, criterion=criterion, allocation=allocation, include=include or (),
            exclude=exclude or (), subset=subset, device=device, on_point=point_done, recalibrate_bn=recalibrate_bn,
            **rebuild.arguments(),
        )
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "criterion": criterion,
                "allocation": allocation, "include": include or [], "exclude": exclude or [], "subset": subset,
                "recalibrate_bn": result.recalibrate_bn, **rebuild.settings()}
    doc = document("sweep", settings, model=saved.model_spec, dataset=saved.dataset_spec, sweep=result.to_dict())
    write_sweep(out, doc, result)
    console.print(sweep_table(result))
    _print_fallback(result.fallback)
    console.print(f"wrote {out / 'result.json'} and {out / 'sweep.csv'}")


def _warn_if_val_is_small(examples: int, tolerance: float | None) -> None:
    if tolerance and (warning := small_val_warning(examples, tolerance)):
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)


def _print_fallback(fallback: dict[str, str]) -> None:
    """Say which layers were pruned with the criterion's masks alone instead of by reconstruction."""
    for name, reason in fallback.items():
        console.print(f"[yellow]{name}: masks alone, not reconstructed ({reason})[/yellow]", highlight=False)


def _checkpoint_and_data(checkpoint: Path, data: DataChoice, trust_factory: bool, model_arg: list[str] | None):
    saved = load_checkpoint(checkpoint, trust_factory=trust_factory,
                            model_args=assignments("--model-arg", model_arg))
    return saved, load_from_spec(saved.dataset_spec, data_dir=data.data_dir, overrides=data.overrides())


def _subset(text: str | None) -> int | str | None:
    """``--subset``: a positive number of examples or ``auto``."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--subset must be a positive number of examples or 'auto', got {text!r}") from None


def _points(value: float | None) -> float | None:
    return None if value is None else value / 100


@contextmanager
def _growing_progress(description: str):
    """A progress task whose total can grow (adaptive scans plan as they go)."""
    with progress_updates(console) as update:
        yield lambda done, planned: update(description, done, planned)


@app.command("scan")
def scan_command(
    checkpoint: CheckpointOption,
    out: Out = Path("prunescope-out/scan"),
    strategy: Annotated[str, typer.Option(help="adaptive (few evaluations) or grid (sconce's 18 levels).")]
    = "adaptive",
    criterion: UnitCriterion = None,
    granularity: Granularity = "weight",
    importance: ImportanceAlias = None,
    tolerance: Annotated[float, typer.Option(help="Allowed drop in points; adaptive refines where curves cross it.")]
    = 0.5,
    subset: Annotated[str | None, typer.Option(help="Start on a seeded subset of this many val examples, or 'auto' "
                                                    "(3 / tolerance examples); grown where a decision is within "
                                                    "noise.")] = None,
    workers: study_options.Workers = 1,
    storage: study_options.Storage = None,
    study_name: study_options.StudyName = "scan",
    executor: study_options.ExecutorKind = None,
    ray_address: study_options.RayAddress = None,
    gpus_per_worker: study_options.GpusPerWorker = 0.0,
    heartbeat_interval: study_options.HeartbeatInterval = HEARTBEAT_INTERVAL,
    grace_period: study_options.GracePeriod = GRACE_PERIOD,
    recalibrate_bn: Annotated[int, typer.Option(help="Re-estimate BatchNorm statistics of every scanned point on this "
                                                     "many batches of 128 training examples (0: off; pick, compare "
                                                     "and sweep recalibrate by default).")] = 0,
    reconstruct: Reconstruct = None,
    calibration: Calibration = None,
    reconstruct_fallback: ReconstructFallback = False,
    include: Include = None,
    exclude: Exclude = None,
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    seed: Seed = 0,
) -> None:
    """Sensitivity of every layer (or channel group): val metric vs its sparsity, others dense. Resumable."""
    _check_choice("--strategy", strategy, STRATEGIES)
    _check_choice("--granularity", granularity, GRANULARITIES)
    criterion = _criterion(granularity, criterion, importance)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    subset = _subset(subset)
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be a positive number of points, got {tolerance:g}")
    if storage is not None and not storage.strip():
        raise UsageError("--storage is empty: give an Optuna storage URL, or leave it out for a journal file in --out")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    _warn_if_val_is_small(len(dataset.val), tolerance / 100)
    settings = {"checkpoint": str(checkpoint), "strategy": strategy, "granularity": granularity, "criterion": criterion,
                "tolerance": tolerance / 100, "subset": subset, "workers": workers, "study_name": study_name,
                "include": include or [],
                "exclude": exclude or [], "seed": seed, "recalibrate_bn": recalibrate_bn, **rebuild.settings()}
    with _growing_progress("scanning") as advance:
        curves = scan(
            saved.model, dataset, criterion=criterion, strategy=strategy, tolerance=tolerance / 100, subset=subset,
            include=include or (), exclude=exclude or (), device=device,
            storage=out / JOURNAL_FILE if storage is None else storage,
            workers=workers, seed=seed, on_trial=advance, granularity=granularity, study_name=study_name,
            executor_kind=executor, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period, recalibrate_bn=recalibrate_bn,
            **rebuild.arguments(),
        )
    save_scan(out, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
              dataset_spec=saved.dataset_spec, settings=settings)
    console.print(scan_table(curves, tolerance / 100))
    _print_fallback(curves.fallback)
    console.print(f"{curves.evaluations} evaluations ({curves.reused} reused from the study), "
                  f"{curves.examples / len(dataset.val):.1f} full-split equivalents; wrote {out / SCAN_FILE}, "
                  f"{out / 'scan.csv'}, {out / 'plots' / 'curves.png'}")


@app.command("pick")
def pick_command(
    scan_dir: Annotated[Path, typer.Option("--scan", help="Directory written by prunescope scan.")],
    picker: Annotated[str, typer.Option(help=f"{', '.join(PICKERS)}.")] = "ensemble",
    max_drop: Points = None,
    target_sparsity: Annotated[float | None, typer.Option(help="Budget: fraction of weights to remove.")] = None,
    target_params: Annotated[int | None, typer.Option(help="Budget: weights to keep, at most (channel scans: "
                                                           "parameters of the whole model).")] = None,
    target_macs: Annotated[float | None, typer.Option(help="Budget: MACs per sample to keep, at most: a fraction of "
                                                           "the dense MACs (<= 1; 0.5 halves them) or a count.")]
    = None,
    target_latency_ms: Annotated[float | None, typer.Option(help="Budget (channel scans): median ms per batch on "
                                                                 "--device, at most.")] = None,
    latency_batch: Annotated[int, typer.Option(help="Batch size --target-latency-ms is timed with.")] = 1,
    round_to: Annotated[int, typer.Option(help="Channel scans: keep channel counts multiples of this (prunescope "
                                               "prune applies the same).")] = 1,
    lower_bound: Annotated[bool, typer.Option(help="Threshold on the pessimistic end of each interval.")] = False,
    vote: Annotated[bool, typer.Option(help="Ensemble by median instead of the most conservative member.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to verify on (default: the scanned one).")]
    = None,
    recalibrate_bn: RecalibrateBN = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the pick (default: SCAN/pick.json).",
                                             callback=cli_input.output_file("--out"))] = None,
    folds: Annotated[int | None, typer.Option(help="Cross-validate the pick on this many val folds, which chooses "
                                                   "the per-layer threshold (0: off) [3 when the scan kept "
                                                   "per-example results].")] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
) -> None:
    """Choose per-layer sparsities from a scan, cross-validated and verified jointly on val (backing off if needed)."""
    _at_least("--round-to", round_to, 1)
    _at_least("--latency-batch", latency_batch, 1)
    chosen = make_allocator(picker, among=PICKERS, noun="picker", max_drop=_points(max_drop),
                            target_sparsity=target_sparsity, target_params=target_params, target_macs=target_macs,
                            target_latency_ms=target_latency_ms, lower_bound=lower_bound or None, vote=vote or None)
    saved_scan = load_scan(scan_dir)
    source = checkpoint or saved_scan.checkpoint
    if source is None:
        raise UsageError(f"the scan in {scan_dir} names no checkpoint: pass --checkpoint")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(Path(source), data, trust_factory, model_arg)
    saved_scan.check_model(saved.model, scan_dir)
    if saved_scan.curves.reconstruct is not None:
        console.print(f"[yellow]the scan pruned every point by reconstruction ({saved_scan.curves.reconstruct}); the "
                      "pick is verified with the criterion's masks alone[/yellow]", highlight=False)
    if folds is None:
        reason = saved_scan.curves.without_per_example()
        folds = DEFAULT_FOLDS if reason is None else 0
        if reason is not None:
            console.print(f"[yellow]not cross-validated: {reason}[/yellow]")
    with _progress("verifying", 1) as done:
        choice = choose(saved_scan.curves, chosen, saved.model, dataset, max_drop=_points(max_drop), device=device,
                        round_to=round_to, latency_batch=latency_batch, recalibrate_bn=recalibrate_bn,
                        folds=folds, seed=seed)
        done()
    path = out or scan_dir / "pick.json"
    settings = {"scan": str(scan_dir), "checkpoint": str(source), "picker": picker, "max_drop": _points(max_drop),
                "target_sparsity": target_sparsity, "target_params": target_params, "target_macs": target_macs,
                "target_latency_ms": target_latency_ms, "latency_batch": latency_batch, "round_to": round_to,
                "lower_bound": lower_bound, "vote": vote, "recalibrate_bn": choice.recalibrate_bn, "folds": folds,
                "seed": seed}
    write_json(path, document("pick", settings, model=saved.model_spec, dataset=saved.dataset_spec,
                              **choice.to_dict()))
    console.print(choice_table(choice, {name: c.numel for name, c in saved_scan.curves.curves.items()}))
    if choice.footprint is not None:
        size = choice.footprint
        console.print(f"params {size['dense_params']:,} → {size['params']:,}, MACs {size['dense_macs']:,} → "
                      f"{size['macs']:,} ({size['macs_fraction']:.1%} of dense), round to {round_to}")
    _warn_if_val_is_small(len(dataset.val), choice.bound)
    if choice.bound is not None and not choice.verified.within_bound:
        console.print(f"[yellow]even dense the joint drop exceeds {choice.bound * 100:g} pts[/yellow]")
    console.print(f"wrote {path}")


@app.command("compare")
def compare_command(
    checkpoint: CheckpointOption,
    sparsities: Annotated[str, typer.Option(help="Comma-separated global sparsities in [0, 1); with --granularity "
                                                 "channel, fractions of the dense MACs to remove.")]
    = "0.8,0.9,0.95,0.98",
    allocations: Annotated[str | None, typer.Option(
        help=f"Comma-separated: {', '.join(METHODS)} (channels: {', '.join(CHANNEL_METHODS)}) [all].",
        show_default=False)] = None,
    scan_dir: Annotated[Path | None, typer.Option("--scan", help="Scan for 'ours' and 'budget' (default: scan "
                                                                 "OUT/scan now).")] = None,
    granularity: Granularity = "weight",
    criterion: UnitCriterion = None,
    round_to: Annotated[int, typer.Option(help="With --granularity channel, keep channel counts multiples of "
                                               "this.")] = 1,
    include: Include = None,
    exclude: Exclude = None,
    test: Annotated[bool, typer.Option(help="Evaluate the test split once per row, after selection.")] = True,
    recalibrate_bn: RecalibrateBN = None,
    reconstruct: Reconstruct = None,
    calibration: Calibration = None,
    reconstruct_fallback: ReconstructFallback = False,
    out: Out = Path("prunescope-out/compare"),
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    study_name: study_options.StudyName = "scan",
) -> None:
    """One-shot accuracy of our allocation vs uniform, uniform+, global, ERK and LAMP at equal sparsity
    (--granularity channel: the budget pick vs channel-uniform and channel-global at equal MACs)."""
    _check_choice("--granularity", granularity, GRANULARITIES)
    _at_least("--round-to", round_to, 1)
    levels = _parse_sparsities(sparsities)
    allowed = METHODS if granularity == "weight" else CHANNEL_METHODS
    methods = [m.strip() for m in allocations.split(",") if m.strip()] if allocations else list(allowed)
    for method in methods:
        _check_choice("allocation", method, allowed)
    criterion = _criterion(granularity, criterion, None)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    curves = None
    if any(ALLOCATORS[m].reads in ("curves", "validation") for m in methods):  # ours and budget read a scan
        if scan_dir is None:
            scan_dir = out / "scan"
            with _growing_progress("scanning") as advance:
                curves = scan(saved.model, dataset, criterion=criterion, include=include or (),
                              exclude=exclude or (), device=device, storage=scan_dir / JOURNAL_FILE,
                              study_name=study_name, on_trial=advance, granularity=granularity)
            save_scan(scan_dir, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
                      dataset_spec=saved.dataset_spec, settings={"criterion": criterion, "tolerance": 0.005})
        else:
            saved_scan = load_scan(scan_dir)
            saved_scan.check_model(saved.model, scan_dir)
            curves = saved_scan.curves
            if curves.granularity != granularity:
                raise UsageError(f"the scan in {scan_dir} measured {curves.granularity}s: compare with "
                                 f"--granularity {curves.granularity}, or scan with --granularity {granularity}")
    with _progress("comparing", len(levels) * len(methods)) as row_done:
        comparison = compare(saved.model, dataset, levels, methods, granularity=granularity, curves=curves,
                             criterion=criterion, include=include or (), exclude=exclude or (), device=device,
                             test=test, on_row=row_done, recalibrate_bn=recalibrate_bn, round_to=round_to,
                             **rebuild.arguments())
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "allocations": methods,
                "granularity": granularity, "round_to": round_to,
                "scan": str(scan_dir) if scan_dir else None, "criterion": criterion, "test": test,
                "include": include or [], "exclude": exclude or [], "recalibrate_bn": comparison.recalibrate_bn,
                **rebuild.settings()}
    doc = document("compare", settings, model=saved.model_spec, dataset=saved.dataset_spec,
                   comparison=comparison.to_dict())
    write_comparison(out, doc, comparison)
    console.print(comparison_table(comparison))
    _print_fallback(comparison.fallback)
    for row in comparison.rows:
        if row.error is not None:
            console.print(f"{row.method} at {row.sparsity:g}: {row.error}", highlight=False)
    if (effort := selection_sentence(doc["comparison"]["rows"])) is not None:
        console.print(effort, highlight=False)
    console.print(f"wrote {out / 'result.json'}, {out / 'compare.csv'} and plots in {out / 'plots'}")


@app.command("prune")
def prune_command(
    checkpoint: CheckpointOption,
    allocation: Annotated[Path, typer.Option(help="pick.json from prunescope pick, or a {layer: sparsity} JSON.")],
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (0: one-shot).")] = 5,
    lr: Annotated[float, typer.Option(help="Fine-tuning peak learning rate.")] = 0.01,
    optimizer: Optimizer = "sgd",
    batch_size: BatchSize = 128,
    weight_decay: WeightDecay = 5e-4,
    label_smoothing: LabelSmoothing = 0.0,
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without val gain.")] = None,
    criterion: UnitCriterion = None,
    granularity: Granularity = "weight",
    importance: ImportanceAlias = None,
    round_to: Annotated[int | None, typer.Option(help="With --granularity channel, keep channel counts multiples "
                                                      "of this (default: the pick's, else 1).")] = None,
    export_path: Annotated[Path | None, typer.Option("--export", help="With --granularity channel, also write a "
                                                     "torch.export file that loads without prunescope.")] = None,
    recalibrate_bn: Annotated[int, typer.Option(help="With --granularity channel, re-estimate BatchNorm statistics "
                                                     "on this many training batches right after removal (0: off).")]
    = 0,
    reconstruct: Reconstruct = None,
    calibration: Calibration = None,
    reconstruct_fallback: ReconstructFallback = False,
    out: Out = Path("prunescope-out/pruned"),
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    seed: Seed = 0,
) -> None:
    """Prune a checkpoint to an allocation, fine-tune, save OUT/model.pt (channel granularity: physically smaller)."""
    _check_choice("--granularity", granularity, GRANULARITIES)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    _at_least("--finetune-epochs", finetune_epochs, 0)
    _at_least("--recalibrate-bn", recalibrate_bn, 0)
    _at_least("--round-to", round_to, 1)
    _at_least("--patience", patience, 1)
    tune = None
    if finetune_epochs > 0:
        tune = TrainConfig(epochs=finetune_epochs, optimizer=optimizer, lr=lr, batch_size=batch_size,
                           weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed)
    if granularity != "channel" and (round_to is not None or export_path is not None or recalibrate_bn):
        raise UsageError("--round-to, --export and --recalibrate-bn apply to --granularity channel")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    if granularity == "channel":
        pick = read_channel_pick(allocation, saved.model, saved.model_spec)
        chosen = _criterion(granularity, criterion, importance) if criterion or importance else None
        _prune_channels(saved, dataset, checkpoint, allocation, pick, tune, patience, chosen, round_to,
                        export_path, recalibrate_bn, out, device, seed)
    else:
        _prune_weights(saved, dataset, checkpoint, allocation, tune, patience,
                       _criterion(granularity, criterion, importance), rebuild, out, device, seed)


def _criterion(granularity: str, criterion: str | None, importance: str | None) -> str:
    """``--criterion``, or its older name ``--importance``, checked for the granularity (None: its default)."""
    option = "--importance" if importance is not None and criterion is None else "--criterion"
    return criterion_for(granularity, criterion or importance, option)


def _prune_weights(
    saved: Checkpoint, dataset: Dataset, checkpoint: Path, allocation: Path, tune: TrainConfig | None,
    patience: int | None, criterion: str, rebuild: ReconstructChoice, out: Path, device: str, seed: int,
) -> None:
    targets = find_targets(saved.model)
    per_target = load_allocation(allocation, targets)
    with _progress("fine-tuning", tune.epochs if tune else 0) as epoch_done:
        result = prune_weights_and_recover(
            saved.model, saved.model_spec, saved.dataset_spec, dataset, per_target, criterion=criterion, config=tune,
            out=out, patience=patience, device=device, meta={"pruned_from": str(checkpoint)},
            reconstruction=rebuild.arguments(), on_epoch=epoch_done, seed=seed)
    doc = document("prune", {"checkpoint": str(checkpoint), "allocation": str(allocation),
                             "lr": tune.lr if tune else None, "finetune_epochs": tune.epochs if tune else 0,
                             "criterion": criterion, "finetune": tune.to_dict() if tune else None,
                             **rebuild.settings()},
                   model=saved.model_spec, dataset=saved.dataset_spec, allocation=per_target,
                   reconstruction=result.reconstruction.to_dict() if result.reconstruction else None,
                   val={"dense": result.dense.to_dict(), "one_shot": result.one_shot.to_dict(),
                        "finetuned": result.finetuned.to_dict()},
                   finetune={"history": [asdict(r) for r in result.history]})
    write_json(out / "result.json", doc)
    console.print(listing_table(f"val accuracy ({len(dataset.val)} examples), "
                                f"{global_sparsity(per_target, targets):.1%} of the weights removed",
                                ["model", "accuracy", "Δ pts"],
                                _prune_rows(result.dense, result.one_shot, result.finetuned, tune)))
    if result.reconstruction is not None:
        _print_fallback(result.reconstruction.fallback)
    console.print(f"wrote {out / 'model.pt'} and {out / 'result.json'}")


def _prune_rows(before, one_shot, after, tune: TrainConfig | None) -> list[list[str]]:
    """Rows dense / one-shot / fine-tuned (only when it was) of val metrics, Δ against dense in points."""
    rows = [("dense", before), ("pruned, one-shot", one_shot)]
    if tune is not None:
        rows.append((f"pruned, fine-tuned {tune.epochs} ep ({tune.optimizer})", after))
    return [[name, f"{m.accuracy:.2%}", f"{(m.accuracy - before.accuracy) * 100:+.2f}"] for name, m in rows]


def _prune_channels(
    saved: Checkpoint, dataset: Dataset, checkpoint: Path, allocation: Path, pick: PickSettings,
    tune: TrainConfig | None,
    patience: int | None, importance: str | None, round_to: int | None, export_path: Path | None, bn_batches: int,
    out: Path, device: str, seed: int,
) -> None:
    importance = importance or criterion_for("channel", pick.importance)
    finetune_epochs = tune.epochs if tune else 0
    with _progress("fine-tuning", finetune_epochs) as epoch_done:
        result = prune_channels_and_recover(
            saved.model, saved.model_spec, saved.dataset_spec, dataset, pick.allocation, importance=importance,
            round_to=round_to or pick.round_to or 1, config=tune, out=out, export=export_path, patience=patience,
            device=resolve_device(device), meta={"pruned_from": str(checkpoint)}, on_epoch=epoch_done,
            bn_batches=bn_batches,
        )
    dense, pruned = result.pruned.dense, result.pruned.pruned
    doc = document("prune", {"checkpoint": str(checkpoint), "allocation": str(allocation),
                             "lr": tune.lr if tune else None, "finetune": tune.to_dict() if tune else None,
                             "finetune_epochs": finetune_epochs, "granularity": "channel", "importance": importance,
                             "round_to": round_to or pick.round_to or 1, "export": str(export_path or ""),
                             "recalibrate_bn": bn_batches},
                   model=result.pruned.model_spec, dataset=saved.dataset_spec, allocation=pick.allocation,
                   removed_channels=result.pruned.removal, skipped=result.pruned.skipped,
                   footprint={"dense": vars(dense), "pruned": vars(pruned)},
                   val={"dense": result.dense.to_dict(), "one_shot": result.one_shot.to_dict(),
                        "finetuned": result.finetuned.to_dict()},
                   finetune={"history": [asdict(r) for r in result.history]},
                   export={"path": str(result.export) if result.export else None,
                           "max_logit_difference": result.export_difference, "batch": result.export_batch,
                           "batch_reason": result.export_batch_reason})
    write_json(out / "result.json", doc)
    rows = _prune_rows(result.dense, result.one_shot, result.finetuned, tune)
    console.print(listing_table(
        f"val accuracy ({len(dataset.val)} examples); params {dense.params:,} → {pruned.params:,}, "
        f"MACs {dense.macs:,} → {pruned.macs:,} "
        f"({dense.macs / max(pruned.macs, 1):.2f}× fewer)", ["model", "accuracy", "Δ pts"], rows))
    if result.export_batch is not None and result.export_batch != "dynamic":
        console.print(f"[yellow]{result.export} runs batches of {result.export_batch} only: a dynamic batch could "
                      f"not be captured ({result.export_batch_reason})[/yellow]", highlight=False)
    elif result.export is not None:
        console.print(f"{result.export} runs any batch size (dynamic batch)", highlight=False)
    written = [str(out / "model.pt"), str(out / "result.json")] + ([str(result.export)] if result.export else [])
    console.print(f"wrote {', '.join(written)}")


@app.command("gradual")
def gradual_command(
    checkpoint: CheckpointOption,
    target_sparsity: Annotated[float, typer.Option(help="Final global sparsity.")],
    schedule: Annotated[str, typer.Option(help="polynomial (AGP, cubic) or iterative (20% of the rest per round).")]
    = "polynomial",
    initial_sparsity: Annotated[float, typer.Option(help="Polynomial schedule's first sparsity.")] = 0.0,
    steps: Annotated[int, typer.Option(help="Polynomial schedule's number of pruning steps.")] = 10,
    fraction: Annotated[float, typer.Option(help="Iterative: fraction of the remaining weights per round.")] = 0.2,
    epochs_per_step: Annotated[int, typer.Option(help="Fine-tuning epochs after each step.")] = 1,
    allocation: Allocation = "global",
    fixed: Annotated[bool, typer.Option(help="Keep the final allocation's proportions instead of re-picking.")]
    = False,
    lr: Annotated[float, typer.Option(help="Fine-tuning peak learning rate.")] = 0.01,
    optimizer: Optimizer = "sgd",
    batch_size: BatchSize = 128,
    weight_decay: WeightDecay = 5e-4,
    label_smoothing: LabelSmoothing = 0.0,
    out: Out = Path("prunescope-out/gradual"),
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    seed: Seed = 0,
) -> None:
    """Prune gradually along a schedule, fine-tuning between steps; export OUT/model.pt."""
    check_sparsity(target_sparsity, "--target-sparsity")
    _check_choice("--schedule", schedule, ("polynomial", "iterative"))
    _check_choice("--allocation", allocation, ALLOCATIONS)
    sparsities = (polynomial_schedule(initial_sparsity, target_sparsity, steps) if schedule == "polynomial"
                  else iterative_schedule(target_sparsity, fraction))
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    model = saved.model
    targets = find_targets(model)
    with _progress("pruning steps", len(sparsities)) as step_done:
        result = gradual_prune(
            model, dataset, lambda s: allocate(allocation, model, targets, s, example=dataset.train.x[:2]), sparsities,
            TrainConfig(epochs=epochs_per_step, optimizer=optimizer, lr=lr, batch_size=batch_size,
                        weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed),
            repick=not fixed, device=device,
            checkpoint_dir=out / "steps", model_spec=saved.model_spec, seed=seed, on_step=step_done,
        )
    export(result.model, out / "model.pt", saved.model_spec, saved.dataset_spec, meta={"pruned_from": str(checkpoint)})
    write_json(out / "result.json", document("gradual", {"checkpoint": str(checkpoint), "schedule": schedule,
                                                         "sparsities": sparsities, "allocation": allocation},
                                             model=saved.model_spec, dataset=saved.dataset_spec,
                                             gradual=result.to_dict()))
    rows = [[str(st.step), f"{st.sparsity:.1%}", f"{st.achieved_sparsity:.2%}", f"{st.val['accuracy']:.2%}"]
            for st in result.steps]
    console.print(listing_table(f"{schedule} pruning to {target_sparsity:.0%} ({allocation} allocation)",
                                ["step", "target", "achieved", "val accuracy"], rows))
    console.print(f"wrote {out / 'model.pt'} and {out / 'result.json'}")


@app.command("baseline")
def baseline_command(
    checkpoint: Annotated[Path, typer.Option(help="A pruned checkpoint (prunescope prune or gradual).")],
    scratch: Annotated[str, typer.Option(help="E (dense epochs) or B (same compute: epochs × dense/pruned MACs).")]
    = "B",
    epochs: Annotated[int, typer.Option(help="Epochs the dense model was trained for.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.05,
    optimizer: Optimizer = "sgd",
    batch_size: BatchSize = 128,
    weight_decay: WeightDecay = 5e-4,
    label_smoothing: LabelSmoothing = 0.0,
    max_factor: Annotated[float | None, typer.Option(help="Cap scratch-B at this multiple of the epochs.")] = None,
    out: Out = Path("prunescope-out/scratch"),
    data_dir: DataDir = None,
    data_arg: DataArg = None,
    model_arg: ModelArg = None,
    limit_train: LimitTrain = None,
    limit_val: LimitVal = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    seed: Seed = 1,
) -> None:
    """Train the pruned architecture's mask from a fresh initialisation (Liu et al. 2019) and compare."""
    _check_choice("--scratch", scratch.upper(), ("E", "B"))
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = _checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    targets = find_targets(saved.model)
    masks = {t.name: effective_weight(saved.model, t) != 0 for t in targets}
    pruned_accuracy = Evaluator(saved.model, dataset.val, device=device).evaluate().accuracy
    with _progress(f"scratch-{scratch.upper()}", None) as epoch_done:
        config = TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size,
                             weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed)
        result = train_scratch(saved.model_spec, dataset, targets, masks, config, scratch.upper(), None, None, seed,
                               max_factor=max_factor, device=device, checkpoint=out / "model.pt",
                               on_epoch=epoch_done)
    accuracy = Evaluator(result.model, dataset.val, device=device).evaluate().accuracy
    rows = [["fine-tuned pruned model", f"{pruned_accuracy:.2%}", "-"],
            [f"scratch-{scratch.upper()}", f"{accuracy:.2%}", str(len(result.history))]]
    console.print(listing_table("val accuracy at the same mask", ["model", "accuracy", "epochs"], rows))
    verdict = "beat" if pruned_accuracy > accuracy else "did not beat"
    console.print(f"fine-tuning {verdict} training from scratch by {abs(pruned_accuracy - accuracy) * 100:.2f} pts")


@app.command("measure")
def measure_command(
    checkpoint: Annotated[Path, typer.Option(help="The model to time: an exported .pt2 (prune --export) or a "
                                                  "prunescope checkpoint.")],
    dense: Annotated[Path | None, typer.Option(help="Dense model to compare with, exported or checkpoint (default: "
                                                    "the dense architecture rebuilt from the model's spec, with fresh "
                                                    "weights, which do not change latency).", show_default=False)]
    = None,
    device: Device = "auto",
    trust_factory: TrustFactoryOption = False,
    model_arg: ModelArg = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to time.")] = "1,256",
    repeats: Annotated[int, typer.Option(help="Timed forward passes per batch size (after 5 untimed ones).")] = 30,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's own; 1 is steadier "
                                                     "on a busy machine).", show_default=False)] = None,
    trust_export: Annotated[bool, typer.Option(help="Allow torch.export (.pt2) files, whose loader can run code "
                                                    "from a crafted file: only for files you wrote.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the numbers to this JSON file.",
                                                  show_default=False, callback=cli_input.output_file("--json"))]
    = None,
) -> None:
    """Time a model against its dense reference: params, MACs per sample, latency, throughput, speed-up."""
    target = resolve_device(device)
    sizes = _parse_batch_sizes(batch_sizes)
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    model = load_model_file(checkpoint, target, trust_export=trust_export, trust_factory=trust_factory,
                            model_args=assignments("--model-arg", model_arg))
    if model.static_batch is not None and sizes != (model.static_batch,):
        console.print(f"[yellow]{checkpoint.name} was exported with a static batch of {model.static_batch} (its "
                      f"batch cannot be dynamic): timing batch {model.static_batch} only[/yellow]")
        sizes = (model.static_batch,)
    reference = dense_reference(model, dense, target, trust_export=trust_export, trust_factory=trust_factory)
    if reference is None:
        console.print("[yellow]no dense reference: the file names no dense architecture (or is dense itself); "
                      "pass --dense to compare[/yellow]")
    ours, theirs = comparable_modules(model, reference, target)
    result = measure_speedup(ours, theirs, model.input_shape, device=target, batch_sizes=sizes, repeats=repeats)
    runtime = "torch.export graphs" if model.exported or (reference is not None and reference.exported) else "eager"
    labels = (checkpoint.name, dense.name if dense else "dense (rebuilt from spec)")
    shape = "×".join(map(str, model.input_shape))
    columns = ["model", "batch", "params", "MACs / sample", "median ms", "p10–p90 ms", "samples / s", "speed-up",
               "MAC reduction"]
    console.print(listing_table(f"{checkpoint.name} on {target} as {runtime}, input {shape}, {repeats} timed passes "
                                "each, interleaved (speed-up = dense median / model median; range over 5 rounds)",
                                columns, _measure_rows(result, labels)))
    if json_out is not None:
        settings = {"checkpoint": str(checkpoint), "dense": str(dense) if dense else None, "device": str(target),
                    "batch_sizes": list(sizes), "repeats": repeats, "threads": torch.get_num_threads()}
        write_json(json_out, document("measure", settings, input_shape=list(model.input_shape), runtime=runtime,
                                      dense_reference=labels[1] if reference is not None else None, **result))
        console.print(f"wrote {json_out}")


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,256"`` → ``(1, 256)``; UsageError unless every entry is a positive integer."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r} is not a comma-separated list of integers, e.g. 1,256") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes {text!r} must list positive integers, e.g. 1,256")
    return sizes


def _speedup(result: dict, batch: str) -> str:
    low, high = result["speedup_range"][batch]
    return f"{result['speedup'][batch]:.2f}× ({low:.2f}–{high:.2f})"


def _measure_rows(result: dict, labels: tuple[str, str]) -> list[list[str]]:
    """Rows of ``measure_speedup``'s result: per batch size the model, then the dense reference."""
    rows = []
    for batch in result["model"]["latency"]:
        for side, label in zip(("model", "dense"), labels, strict=True):
            if result[side] is None:
                continue
            cost, timing = result[side], result[side]["latency"][batch]
            compared = side == "model" and result["dense"] is not None
            rows.append([
                label, batch, f"{cost['params']:,}", f"{cost['macs']:,}", f"{timing['median_ms']:.3f}",
                f"{timing['p10_ms']:.3f}–{timing['p90_ms']:.3f}", f"{timing['throughput']:,.0f}",
                _speedup(result, batch) if compared else "-",
                f"{result['mac_reduction']:.2f}×" if compared and result["mac_reduction"] else "-",
            ])
    return rows


app.command("status")(study_options.status_command)


@app.command("report")
def report_command(directory: Annotated[Path, typer.Argument(help="Output directory of prunescope run.")]) -> None:
    """Re-render report.html from DIRECTORY/result.json."""
    doc = load_result(directory)
    try:  # the document passed the schema check; an entry it lacks is a damaged file, not a bug
        table = shift_table(doc["hparams"]) if doc.get("command") == "hparams" else run_table(doc)
        path = write_html(directory, doc)
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise UsageError(f"the result in {directory} is incomplete or damaged ({type(error).__name__}: {error}); "
                         "re-run prunescope run to complete it") from None
    console.print(table)
    console.print(f"wrote {path}")


app.command("hparams")(hparams_command)


@app.command("models")
def models_command() -> None:
    """List the model zoo."""
    rows = [[m.name, m.description] for m in zoo.available_models()]
    console.print(listing_table("models (or package.module:factory)", ["name", "description"], rows))


@app.command("datasets")
def datasets_command(data_dir: DataDir = None) -> None:
    """List the datasets, with split sizes for those that can be loaded here."""
    rows = []
    for info in available_datasets():
        try:
            d = describe_dataset(load_dataset(info.name, data_dir=data_dir))
            sizes = f"{d['train']} / {d['val']} / {d['test']}"
            shape = "×".join(map(str, d["input_shape"]))
        except UsageError:
            sizes, shape = "needs --data-dir" if info.needs_data_dir else "unavailable", "-"
        rows.append([info.name, shape, sizes, info.description])
    columns = ["name", "input", "train / val / test", "description"]
    console.print(listing_table("datasets (or package.module:factory)", columns, rows))

app.add_typer(regimes_app, name="regimes")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input (exit code 2) and failures (1) end with one line on stderr, never a traceback."""
    cli_input.run_app(app, argv)
