"""``prunescope scan`` and ``pick``: sensitivity curves, and per-layer sparsities chosen from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunescope.cli import inputs as cli_input
from prunescope.cli.options import (
    Calibration,
    CheckpointOption,
    DataArg,
    DataDir,
    Device,
    Exclude,
    ExecutorKind,
    GpusPerWorker,
    GracePeriod,
    Granularity,
    HeartbeatInterval,
    ImportanceAlias,
    Include,
    LimitTrain,
    LimitVal,
    ModelArg,
    Out,
    Points,
    RayAddress,
    RecalibrateBN,
    Reconstruct,
    ReconstructFallback,
    Seed,
    Storage,
    StudyName,
    TrustFactoryOption,
    UnitCriterion,
    UnitKind,
    Workers,
    allowed_drop,
    at_least,
    check_choice,
    checkpoint_and_data,
    data_choice,
    parse_subset,
    reconstruct_choice,
    unit_criterion,
    unit_kind,
)
from prunescope.cli.terminal import (
    console,
    growing_progress,
    print_fallback,
    print_plan,
    print_prunable,
    print_units,
    progress_bar,
    warn_if_val_is_small,
)
from prunescope.errors import UsageError
from prunescope.io import write_json
from prunescope.pick.choose import choose
from prunescope.pick.crossval import DEFAULT_FOLDS
from prunescope.pick.registry import ALLOCATORS, PICKERS, make_allocator
from prunescope.prunable import unit_share
from prunescope.report.schema import document
from prunescope.report.tables import (
    choice_table,
    save_scan,
    scan_table,
)
from prunescope.scan import GRANULARITIES, STRATEGIES, scan
from prunescope.scan.files import JOURNAL_FILE, SCAN_FILE, load_scan
from prunescope.scores import Score, default_metric
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL


def scan_command(
    checkpoint: CheckpointOption,
    out: Out = Path("prunescope-out/scan"),
    strategy: Annotated[str, typer.Option(help="adaptive (few evaluations) or grid (sconce's 18 levels).")]
    = "adaptive",
    criterion: UnitCriterion = None,
    granularity: Granularity = "weight",
    units: UnitKind = "matrix",
    importance: ImportanceAlias = None,
    tolerance: Annotated[float | None, typer.Option(
        help="Allowed drop: points of accuracy, or percent more perplexity for a language model; adaptive refines "
             "where curves cross it [0.5 pts; 5%].", show_default=False)] = None,
    subset: Annotated[str | None, typer.Option(help="Start on a seeded subset of this many val examples, or 'auto' "
                                                    "(3 / tolerance examples); grown where a decision is within "
                                                    "noise.")] = None,
    workers: Workers = 1,
    storage: Storage = None,
    study_name: StudyName = "scan",
    executor: ExecutorKind = None,
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    heartbeat_interval: HeartbeatInterval = HEARTBEAT_INTERVAL,
    grace_period: GracePeriod = GRACE_PERIOD,
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
    check_choice("--strategy", strategy, STRATEGIES)
    check_choice("--granularity", granularity, GRANULARITIES)
    criterion = unit_criterion(granularity, criterion, importance)
    units = unit_kind(units, granularity)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    subset = parse_subset(subset)
    if tolerance is not None and not tolerance > 0:
        raise UsageError(f"--tolerance must be a positive number (points, or percent of perplexity), got {tolerance:g}")
    if storage is not None and not storage.strip():
        raise UsageError("--storage is empty: give an Optuna storage URL, or leave it out for a journal file in --out")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    rebuild = rebuild.for_model(saved.model, dataset, include or (), exclude or ())
    print_plan(rebuild.plan)
    metric = default_metric(dataset.val)
    allowed = allowed_drop(tolerance, metric)
    console.print(f"tolerance: {Score(metric).bound_text(allowed)}", highlight=False)
    warn_if_val_is_small(len(dataset.val), allowed, metric)
    prunable = print_prunable(unit_share(saved.model, granularity, dataset.input_shape, include or (), exclude or (),
                                         dataset.vocabulary))
    settings = {"checkpoint": str(checkpoint), "strategy": strategy, "granularity": granularity, "units": units,
                "criterion": criterion,
                "metric": metric, "tolerance": allowed, "subset": subset, "workers": workers, "study_name": study_name,
                "include": include or [],
                "exclude": exclude or [], "seed": seed, "recalibrate_bn": recalibrate_bn, **rebuild.settings()}
    with growing_progress("scanning") as advance:
        curves = scan(
            saved.model, dataset, criterion=criterion, strategy=strategy, tolerance=allowed, subset=subset,
            include=include or (), exclude=exclude or (), device=device,
            storage=out / JOURNAL_FILE if storage is None else storage,
            workers=workers, seed=seed, on_trial=advance, granularity=granularity, study_name=study_name, units=units,
            executor_kind=executor, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period, recalibrate_bn=recalibrate_bn,
            **rebuild.arguments(),
        )
    save_scan(out, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
              dataset_spec=saved.dataset_spec, settings=settings, prunable=prunable)
    console.print(scan_table(curves, allowed))
    print_units(curves.units, curves.curves)
    print_fallback(curves.fallback)
    others = curves.evaluations - curves.evaluated_here
    console.print(f"{curves.evaluations} evaluations ({curves.reused} reused from the study): "
                  f"{curves.evaluated_here} evaluated by this scan, {others} by other processes; "
                  f"{curves.examples / len(dataset.val):.1f} full-split equivalents; wrote {out / SCAN_FILE}, "
                  f"{out / 'scan.csv'}, {out / 'plots' / 'curves.png'}")


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
    at_least("--round-to", round_to, 1)
    at_least("--latency-batch", latency_batch, 1)
    saved_scan = load_scan(scan_dir)
    bound = allowed_drop(max_drop, saved_scan.curves.metric)
    # Given or not, the bound reaches the pickers that take one: its default depends on the scan's metric.
    taken = max_drop is not None or (picker in ALLOCATORS and "max_drop" in ALLOCATORS[picker].options)
    chosen = make_allocator(picker, among=PICKERS, noun="picker", max_drop=bound if taken else None,
                            target_sparsity=target_sparsity, target_params=target_params, target_macs=target_macs,
                            target_latency_ms=target_latency_ms, lower_bound=lower_bound or None, vote=vote or None)
    source = checkpoint or saved_scan.checkpoint
    if source is None:
        raise UsageError(f"the scan in {scan_dir} names no checkpoint: pass --checkpoint")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(Path(source), data, trust_factory, model_arg)
    saved_scan.check_model(saved.model, scan_dir)
    if saved_scan.curves.reconstruct is not None:
        console.print(f"[yellow]the scan pruned every point by reconstruction ({saved_scan.curves.reconstruct}); the "
                      "pick is verified with the criterion's masks alone[/yellow]", highlight=False)
    if folds is None:
        reason = saved_scan.curves.without_per_example()
        folds = DEFAULT_FOLDS if reason is None else 0
        if reason is not None:
            console.print(f"[yellow]not cross-validated: {reason}[/yellow]")
    print_units(saved_scan.curves.units, saved_scan.curves.curves)
    with progress_bar("verifying", 1) as done:
        choice = choose(saved_scan.curves, chosen, saved.model, dataset, max_drop=bound, device=device,
                        round_to=round_to, latency_batch=latency_batch, recalibrate_bn=recalibrate_bn,
                        folds=folds, seed=seed)
        done()
    path = out or scan_dir / "pick.json"
    settings = {"scan": str(scan_dir), "checkpoint": str(source), "picker": picker, "max_drop": bound,
                "metric": saved_scan.curves.metric,
                "target_sparsity": target_sparsity, "target_params": target_params, "target_macs": target_macs,
                "target_latency_ms": target_latency_ms, "latency_batch": latency_batch, "round_to": round_to,
                "lower_bound": lower_bound, "vote": vote, "recalibrate_bn": choice.recalibrate_bn, "folds": folds,
                "seed": seed}
    write_json(path, document("pick", settings, model=saved.model_spec, dataset=saved.dataset_spec,
                              **choice.to_dict()))
    metric = saved_scan.curves.metric
    if choice.bound is not None:
        console.print(f"bound: {Score(metric).bound_text(choice.bound)}", highlight=False)
    console.print(choice_table(choice, {name: c.numel for name, c in saved_scan.curves.curves.items()}, metric))
    if choice.footprint is not None:
        size = choice.footprint
        console.print(f"params {size['dense_params']:,} → {size['params']:,}, MACs {size['dense_macs']:,} → "
                      f"{size['macs']:,} ({size['macs_fraction']:.1%} of dense), round to {round_to}")
    warn_if_val_is_small(len(dataset.val), choice.bound, metric)
    if choice.bound is not None and not choice.verified.within_bound:
        console.print(f"[yellow]even dense the joint drop exceeds {Score(metric).drop_text(choice.bound, False)}"
                      "[/yellow]")
    console.print(f"wrote {path}")
