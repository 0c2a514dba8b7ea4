"""``prunescope sweep`` and ``compare``: one allocation over sparsities; every allocation at equal sparsity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunescope.cli.options import (
    DEFAULT_SPARSITIES_TEXT,
    Calibration,
    CheckpointOption,
    Criterion,
    DataArg,
    DataDir,
    Device,
    Exclude,
    Granularity,
    Include,
    LimitTrain,
    LimitVal,
    ModelArg,
    Out,
    RecalibrateBN,
    Reconstruct,
    ReconstructFallback,
    StudyName,
    TrustFactoryOption,
    UnitCriterion,
    at_least,
    check_choice,
    checkpoint_and_data,
    data_choice,
    parse_sparsities,
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
)
from prunescope.criteria import CRITERIA
from prunescope.errors import UsageError
from prunescope.patterns import check_widths, parse_patterns
from prunescope.pick.registry import ALLOCATORS, WEIGHT_METHODS
from prunescope.pipeline.compare import CHANNEL_METHODS, DEFAULT_METHODS, METHODS, compare
from prunescope.pipeline.sweep import sweep
from prunescope.prunable import unit_share
from prunescope.report.schema import document
from prunescope.report.tables import (
    comparison_table,
    save_scan,
    sweep_table,
    write_comparison,
    write_sweep,
)
from prunescope.report.verdict import selection_sentence
from prunescope.scan import GRANULARITIES, scan
from prunescope.scan.files import JOURNAL_FILE, load_scan
from prunescope.targets import find_targets


def sweep_command(
    checkpoint: CheckpointOption,
    sparsities: Annotated[str | None, typer.Option(help=f"Comma-separated global sparsities in [0, 1) "
                                                        f"[{DEFAULT_SPARSITIES_TEXT}].", show_default=False)] = None,
    criterion: Criterion = "magnitude",
    allocation: Annotated[str | None, typer.Option(help=f"How the global sparsity is split: "
                                                        f"{', '.join(WEIGHT_METHODS)} [uniform].",
                                                   show_default=False)] = None,
    pattern: Annotated[str | None, typer.Option(help="Comma-separated N:M patterns (e.g. 2:4,4:8) to sweep instead "
                                                     "of sparsities: every layer keeps N of every M weights along "
                                                     "its input dimension.", show_default=False)] = None,
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
    """One-shot prune at each sparsity (or N:M pattern), evaluate on val, restore; print and save a table."""
    patterns = parse_patterns(pattern) if pattern is not None else []
    if patterns and (sparsities is not None or allocation is not None):
        raise UsageError("--pattern fixes every layer at 1 − N/M: drop --sparsities and --allocation")
    levels = [] if patterns else parse_sparsities(sparsities or DEFAULT_SPARSITIES_TEXT)
    allocation = allocation or "uniform"
    check_choice("--criterion", criterion, list(CRITERIA))
    check_choice("--allocation", allocation, WEIGHT_METHODS)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback)
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    rebuild = rebuild.for_model(saved.model, dataset, include or (), exclude or ())
    print_plan(rebuild.plan)
    for chosen in patterns:  # refused before anything is printed or evaluated
        check_widths(find_targets(saved.model, include or (), exclude or ()), chosen)
    prunable = print_prunable(unit_share(saved.model, "weight", dataset.input_shape, include or (), exclude or (),
                                         dataset.vocabulary))
    with progress_bar("sweeping", len(levels) + len(patterns) + 1) as point_done:
        result = sweep(
            saved.model, dataset, levels, criterion=criterion, allocation=allocation, include=include or (),
            exclude=exclude or (), subset=subset, device=device, on_point=point_done, recalibrate_bn=recalibrate_bn,
            patterns=patterns, **rebuild.arguments(),
        )
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "patterns": [str(p) for p in patterns],
                "criterion": criterion,
                "allocation": allocation, "include": include or [], "exclude": exclude or [], "subset": subset,
                "recalibrate_bn": result.recalibrate_bn, **rebuild.settings()}
    doc = document("sweep", settings, model=saved.model_spec, dataset=saved.dataset_spec, prunable=prunable,
                   sweep=result.to_dict())
    write_sweep(out, doc, result)
    console.print(sweep_table(result))
    print_fallback(result.fallback)
    console.print(f"wrote {out / 'result.json'} and {out / 'sweep.csv'}")


def compare_command(
    checkpoint: CheckpointOption,
    sparsities: Annotated[str, typer.Option(help="Comma-separated global sparsities in [0, 1); with --granularity "
                                                 "channel, fractions of the dense MACs to remove.")]
    = "0.8,0.9,0.95,0.98",
    allocations: Annotated[str | None, typer.Option(
        help=f"Comma-separated: {', '.join(METHODS)} (channels: {', '.join(CHANNEL_METHODS)}) "
             f"[{', '.join(DEFAULT_METHODS)}; channels: all].",
        show_default=False)] = None,
    scan_dir: Annotated[Path | None, typer.Option("--scan", help="Scan for 'ours' and 'budget' (default: scan "
                                                                 "OUT/scan now).")] = None,
    granularity: Granularity = "weight",
    units: Annotated[str | None, typer.Option(
        "--units", help="The units 'ours' and 'budget' pick on: matrix or block (each block of the network one "
                        "sparsity); with --scan, the scan's [matrix].", show_default=False)] = None,
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
    study_name: StudyName = "scan",
) -> None:
    """One-shot accuracy of our allocation vs uniform, uniform+, global, ERK and LAMP at equal sparsity
    (--granularity channel: the budget pick vs channel-uniform and channel-global at equal MACs)."""
    check_choice("--granularity", granularity, GRANULARITIES)
    at_least("--round-to", round_to, 1)
    levels = parse_sparsities(sparsities)
    allowed = METHODS if granularity == "weight" else CHANNEL_METHODS
    default = DEFAULT_METHODS if granularity == "weight" else CHANNEL_METHODS
    methods = [m.strip() for m in allocations.split(",") if m.strip()] if allocations else list(default)
    for method in methods:
        check_choice("allocation", method, allowed)
    criterion = unit_criterion(granularity, criterion, None)
    asked_units = None if units is None else unit_kind(units, granularity)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    rebuild = rebuild.for_model(saved.model, dataset, include or (), exclude or ())
    print_plan(rebuild.plan)
    prunable = print_prunable(unit_share(saved.model, granularity, dataset.input_shape, include or (), exclude or (),
                                         dataset.vocabulary))
    curves = None
    if any(ALLOCATORS[m].needs_scan for m in methods):  # ours and budget read a scan
        if scan_dir is None:
            scan_dir = out / "scan"
            with growing_progress("scanning") as advance:
                curves = scan(saved.model, dataset, criterion=criterion, include=include or (),
                              exclude=exclude or (), device=device, storage=scan_dir / JOURNAL_FILE,
                              study_name=study_name, on_trial=advance, granularity=granularity,
                              units=asked_units or "matrix")
            save_scan(scan_dir, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
                      dataset_spec=saved.dataset_spec,
                      settings={"criterion": criterion, "tolerance": 0.005, "units": curves.units}, prunable=prunable)
        else:
            saved_scan = load_scan(scan_dir)
            saved_scan.check_model(saved.model, scan_dir)
            curves = saved_scan.curves
            if curves.granularity != granularity:
                raise UsageError(f"the scan in {scan_dir} measured {curves.granularity}s: compare with "
                                 f"--granularity {curves.granularity}, or scan with --granularity {granularity}")
            if asked_units is not None and curves.units != asked_units:
                raise UsageError(f"the scan in {scan_dir} has one curve per {curves.units}, not per {asked_units}: "
                                 f"leave --units out, or scan with --units {asked_units}")
        if granularity == "weight":
            print_units(curves.units, curves.curves)
    elif asked_units is not None:
        raise UsageError("--units chooses what 'ours' and 'budget' pick on: none of these allocations reads a scan")
    with progress_bar("comparing", len(levels) * len(methods)) as row_done:
        comparison = compare(saved.model, dataset, levels, methods, granularity=granularity, curves=curves,
                             criterion=criterion, include=include or (), exclude=exclude or (), device=device,
                             test=test, on_row=row_done, recalibrate_bn=recalibrate_bn, round_to=round_to,
                             **rebuild.arguments())
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "allocations": methods,
                "granularity": granularity, "units": curves.units if curves is not None else asked_units,
                "round_to": round_to,
                "scan": str(scan_dir) if scan_dir else None, "criterion": criterion, "test": test,
                "include": include or [], "exclude": exclude or [], "recalibrate_bn": comparison.recalibrate_bn,
                **rebuild.settings()}
    doc = document("compare", settings, model=saved.model_spec, dataset=saved.dataset_spec, prunable=prunable,
                   comparison=comparison.to_dict())
    write_comparison(out, doc, comparison)
    console.print(comparison_table(comparison))
    print_fallback(comparison.fallback)
    for row in comparison.rows:
        if row.error is not None:
            console.print(f"{row.method} at {row.sparsity:g}: {row.error}", highlight=False)
    if (effort := selection_sentence(doc["comparison"]["rows"])) is not None:
        console.print(effort, highlight=False)
    for row in comparison.rows:
        if row.error is None and "chosen" in row.details:
            chosen = ", ".join(f"{key} = {value:g}" for key, value in row.details["chosen"].items())
            console.print(f"{row.method} at {row.sparsity:g}: {chosen} chosen on val among "
                          f"{len(row.details['grid'])} settings", highlight=False)
    console.print(f"wrote {out / 'result.json'}, {out / 'compare.csv'} and plots in {out / 'plots'}")
