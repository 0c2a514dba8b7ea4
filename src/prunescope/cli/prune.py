"""``prunescope prune`` and ``measure``: prune, fine-tune and save; time a model against its dense self."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import torch
import typer

from prunescope.apply import load_allocation
from prunescope.checkpoint import Checkpoint
from prunescope.cli import inputs as cli_input
from prunescope.cli.options import (
    BatchSize,
    Calibration,
    CheckpointOption,
    DataArg,
    DataDir,
    Device,
    Granularity,
    ImportanceAlias,
    LabelSmoothing,
    LimitTrain,
    LimitVal,
    ModelArg,
    Optimizer,
    Out,
    Reconstruct,
    ReconstructChoice,
    ReconstructFallback,
    Seed,
    TrustFactoryOption,
    UnitCriterion,
    WeightDecay,
    assignments,
    at_least,
    check_choice,
    checkpoint_and_data,
    data_choice,
    reconstruct_choice,
    unit_criterion,
)
from prunescope.cli.terminal import console, print_fallback, print_plan, print_prunable, progress_bar
from prunescope.data import Dataset
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.io import write_json
from prunescope.masks import global_sparsity
from prunescope.measure import measure_speedup
from prunescope.measure.semistructured import semi_structured_speedup
from prunescope.patterns import Pattern, check_widths, parse_pattern
from prunescope.pipeline.prune import (
    PickSettings,
    prune_channels_and_recover,
    prune_weights_and_recover,
    read_channel_pick,
)
from prunescope.prunable import PrunableShare, unit_share
from prunescope.report.schema import document
from prunescope.report.tables import (
    listing_table,
)
from prunescope.scan import GRANULARITIES
from prunescope.structured.export import comparable_modules, dense_reference, load_model_file
from prunescope.targets import chosen_targets, find_targets
from prunescope.train import (
    TrainConfig,
)
from prunescope.units import criterion_for


def prune_command(
    checkpoint: CheckpointOption,
    allocation: Annotated[Path | None, typer.Option(help="pick.json from prunescope pick, or a {layer: sparsity} JSON "
                                                         "(with --pattern: the layers it prunes get the pattern; "
                                                         "default every layer).", show_default=False)] = None,
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
    pattern: Annotated[str | None, typer.Option(help="N:M sparsity, e.g. 2:4: N kept of every M weights along each "
                                                     "layer's input dimension, by the criterion or by --reconstruct.",
                                                show_default=False)] = None,
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
    check_choice("--granularity", granularity, GRANULARITIES)
    rebuild = reconstruct_choice(reconstruct, calibration, reconstruct_fallback, granularity)
    at_least("--finetune-epochs", finetune_epochs, 0)
    at_least("--recalibrate-bn", recalibrate_bn, 0)
    at_least("--round-to", round_to, 1)
    at_least("--patience", patience, 1)
    tune = None
    if finetune_epochs > 0:
        tune = TrainConfig(epochs=finetune_epochs, optimizer=optimizer, lr=lr, batch_size=batch_size,
                           weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed)
    if granularity != "channel" and (round_to is not None or export_path is not None or recalibrate_bn):
        raise UsageError("--round-to, --export and --recalibrate-bn apply to --granularity channel")
    chosen_pattern = parse_pattern(pattern) if pattern is not None else None
    if chosen_pattern is not None and granularity != "weight":
        raise UsageError("--pattern keeps N of every M weights: it applies to --granularity weight")
    if allocation is None and chosen_pattern is None:
        raise UsageError("give --allocation (a pick.json or a {layer: sparsity} JSON), or --pattern N:M")
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    rebuild = rebuild.for_model(saved.model, dataset)
    print_plan(rebuild.plan)
    share = unit_share(saved.model, granularity, dataset.input_shape, vocabulary=dataset.vocabulary)
    if granularity == "channel":
        if allocation is None:
            raise UsageError("--granularity channel applies a channel pick: give --allocation")
        pick = read_channel_pick(allocation, saved.model, saved.model_spec)
        chosen = unit_criterion(granularity, criterion, importance) if criterion or importance else None
        _prune_channels(saved, dataset, checkpoint, allocation, pick, tune, patience, chosen, round_to,
                        export_path, recalibrate_bn, out, device, seed, print_prunable(share))
    else:
        _prune_weights(saved, dataset, checkpoint, allocation, tune, patience,
                       unit_criterion(granularity, criterion, importance), rebuild, out, device, seed, share,
                       chosen_pattern)


def _prune_weights(
    saved: Checkpoint, dataset: Dataset, checkpoint: Path, allocation: Path | None, tune: TrainConfig | None,
    patience: int | None, criterion: str, rebuild: ReconstructChoice, out: Path, device: str, seed: int,
    share: PrunableShare,
    pattern: Pattern | None = None,
) -> None:
    targets = find_targets(saved.model)
    default = chosen_targets(saved.model, dataset.vocabulary)[0]  # without --allocation: what a pattern prunes
    per_target = (load_allocation(allocation, targets) if allocation is not None
                  else {t.name: 1.0 if t in default else 0.0 for t in targets})
    if pattern is not None:  # every layer the allocation prunes is at 1 − N/M
        per_target = {name: pattern.sparsity if s > 0 else 0.0 for name, s in per_target.items()}
        check_widths([t for t in targets if per_target.get(t.name, 0) > 0], pattern)  # before anything is said
    prunable = print_prunable(share)
    with progress_bar("fine-tuning", tune.epochs if tune else 0) as epoch_done:
        result = prune_weights_and_recover(
            saved.model, saved.model_spec, saved.dataset_spec, dataset, per_target, criterion=criterion, config=tune,
            out=out, patience=patience, device=device, meta={"pruned_from": str(checkpoint)},
            reconstruction=rebuild.arguments(), on_epoch=epoch_done, seed=seed, pattern=pattern)
    doc = document("prune", {"checkpoint": str(checkpoint), "allocation": str(allocation) if allocation else None,
                             "pattern": str(pattern) if pattern else None,
                             "lr": tune.lr if tune else None, "finetune_epochs": tune.epochs if tune else 0,
                             "criterion": criterion, "finetune": tune.to_dict() if tune else None,
                             **rebuild.settings()},
                   model=saved.model_spec, dataset=saved.dataset_spec, prunable=prunable, allocation=per_target,
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
        print_fallback(result.reconstruction.fallback)
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
    out: Path, device: str, seed: int, prunable: dict,
) -> None:
    importance = importance or criterion_for("channel", pick.importance)
    finetune_epochs = tune.epochs if tune else 0
    with progress_bar("fine-tuning", finetune_epochs) as epoch_done:
        result = prune_channels_and_recover(
            saved.model, saved.model_spec, saved.dataset_spec, dataset, pick.allocation, importance=importance,
            round_to=round_to or pick.round_to or 1, config=tune, out=out, export=export_path, patience=patience,
            device=device, meta={"pruned_from": str(checkpoint)}, on_epoch=epoch_done,
            bn_batches=bn_batches,
        )
    dense, pruned = result.pruned.dense, result.pruned.pruned
    doc = document("prune", {"checkpoint": str(checkpoint), "allocation": str(allocation),
                             "lr": tune.lr if tune else None, "finetune": tune.to_dict() if tune else None,
                             "finetune_epochs": finetune_epochs, "granularity": "channel", "importance": importance,
                             "round_to": round_to or pick.round_to or 1, "export": str(export_path or ""),
                             "recalibrate_bn": bn_batches},
                   model=result.pruned.model_spec, dataset=saved.dataset_spec, prunable=prunable,
                   allocation=pick.allocation,
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
    semi = semi_structured_speedup(ours, model.input_shape, device=target, batch_sizes=sizes, repeats=repeats)
    if semi["layers"]:
        console.print(_semi_structured_line(semi), highlight=False)
    if json_out is not None:
        settings = {"checkpoint": str(checkpoint), "dense": str(dense) if dense else None, "device": str(target),
                    "batch_sizes": list(sizes), "repeats": repeats, "threads": torch.get_num_threads()}
        write_json(json_out, document("measure", settings, input_shape=list(model.input_shape), runtime=runtime,
                                      dense_reference=labels[1] if reference is not None else None,
                                      semi_structured=semi, **result))
        console.print(f"wrote {json_out}")


def _semi_structured_line(semi: dict) -> str:
    """One line: the 2:4 kernels' speed-up over dense kernels on the same weights, or why none was measured."""
    if semi["reason"] is not None:
        return semi["reason"]
    speedups = ", ".join(f"batch {b}: {x:.2f}× ({semi['speedup_range'][b][0]:.2f}–{semi['speedup_range'][b][1]:.2f})"
                         for b, x in semi["speedup"].items())
    left = f"; left dense: {', '.join(semi['skipped'])}" if semi["skipped"] else ""
    return (f"2:4 semi-structured kernels ({semi['dtype']}, compute capability {semi['capability']}) on "
            f"{len(semi['converted'])} Linear layers vs dense kernels on the same weights: {speedups}{left}")


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
