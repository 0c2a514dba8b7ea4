"""``prunescope hparams``: do the dense model's hyperparameters still hold once it is pruned?

A thin layer over :func:`prunescope.hparams.study`: parse the options, run the study with a
progress bar per stage, write ``result.json`` and CSVs, print the table and the verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunescope.cli.options import (
    Device,
    ExecutorKind,
    GpusPerWorker,
    GracePeriod,
    HeartbeatInterval,
    RayAddress,
    Workers,
    numbers,
)
from prunescope.cli.terminal import console, print_prunable, stage_progress
from prunescope.errors import UsageError
from prunescope.hparams import GRID_LIMIT, HparamsConfig, study
from prunescope.hparams.degrees import ALLOCATORS, GRANULARITIES
from prunescope.hparams.search import SEARCHES
from prunescope.hparams.trials import RECOVERIES
from prunescope.prunable import spec_share
from prunescope.report.hparams import shift_table, write_result
from prunescope.trials.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL


def hparams_command(
    model: Annotated[str, typer.Option(help="Zoo model or package.module:factory.")] = "mlp",
    data: Annotated[str, typer.Option(help="Dataset name or package.module:factory.")] = "digits",
    data_dir: Annotated[str | None, typer.Option(help="Folder with the dataset files (or PRUNESCOPE_DATA_DIR).",
                                                 show_default=False)] = None,
    limit_train: Annotated[int | None, typer.Option(help="Keep a stratified subset of this many train examples.",
                                                    show_default=False)] = None,
    space: Annotated[Path | None, typer.Option(help="Search space TOML (default: lr, weight_decay, momentum, "
                                                    "batch_size; 10 epochs).", show_default=False)] = None,
    search: Annotated[str, typer.Option(help=f"Dense tuning: {', '.join(SEARCHES)} (bohb: TPE + Hyperband).")]
    = "tpe",
    budget: Annotated[int, typer.Option(help="Trials of the dense search.")] = 20,
    grid: Annotated[str, typer.Option(help="Points per axis around the optimum, e.g. 5x5 (two axes).")] = "5x5",
    axes: Annotated[str | None, typer.Option(help="Comma-separated grid axes (default: the most important knobs).",
                                             show_default=False)] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per grid point (the noise floor is their spread).")] = 3,
    granularity: Annotated[str, typer.Option(help=f"{' or '.join(GRANULARITIES)} pruning.")] = "channel",
    target_macs: Annotated[str | None, typer.Option(help="Channel pruning: MAC fractions, 1 (dense) included "
                                                         "[1,0.7,0.5,0.35,0.25].", show_default=False)] = None,
    sparsities: Annotated[str | None, typer.Option(help="Weight pruning: global sparsities, 0 (dense) included "
                                                        "[0,0.5,0.7,0.8,0.9,0.95].", show_default=False)] = None,
    allocator: Annotated[str, typer.Option(help=f"channel: {', '.join(ALLOCATORS['channel'])}; weight: "
                                                f"{', '.join(ALLOCATORS['weight'])}.")] = "budget",
    recover: Annotated[str, typer.Option(help=f"{' or '.join(RECOVERIES)}: how each grid point recovers the "
                                              "pruned model.")] = "finetune",
    workers: Workers = 1,
    executor: ExecutorKind = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage: postgresql://user@host/db (shared by machines) "
                                                     "or a journal file (default: OUT/hparams.journal).",
                                                show_default=False)] = None,
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    heartbeat_interval: HeartbeatInterval = HEARTBEAT_INTERVAL,
    grace_period: GracePeriod = GRACE_PERIOD,
    out: Annotated[Path, typer.Option(help="Output directory; rerunning with the same one resumes.")]
    = Path("prunescope-out/hparams"),
    force: Annotated[bool, typer.Option(help=f"Allow grids above {GRID_LIMIT} trainings in all.")] = False,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the split, the search and the first grid seed.")] = 0,
) -> None:
    """Tune the dense model, grid around its optimum, prune to several degrees, grid again, measure the shift."""
    if granularity == "channel" and sparsities is not None:
        raise UsageError("--sparsities applies to --granularity weight; channel pruning takes --target-macs")
    if granularity == "weight" and target_macs is not None:
        raise UsageError("--target-macs applies to --granularity channel; weight pruning takes --sparsities")
    option, text = ("--target-macs", target_macs) if granularity == "channel" else ("--sparsities", sparsities)
    levels = None if text is None else numbers(option, text)
    config = HparamsConfig(
        model=model, data=data, data_dir=data_dir, limit_train=limit_train, space=str(space) if space else None,
        search=search, budget=budget, grid=grid, axes=tuple(a.strip() for a in axes.split(",")) if axes else (),
        seeds=seeds, granularity=granularity, levels=levels, allocator=allocator, recover=recover, workers=workers,
        storage=storage, device=device, seed=seed, force=force, executor=executor, ray_address=ray_address,
        gpus_per_worker=gpus_per_worker, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
    )
    with stage_progress() as progress:
        result = study(config, out, progress=progress)
    prunable = print_prunable(spec_share(result.model_spec, granularity))
    write_result(out, result, prunable)
    console.print(shift_table(result.to_dict()))
    console.print(f"• {result.verdict['sentence']}", highlight=False)
    console.print(f"• {result.verdict['answer']}", highlight=False)
    console.print(f"wrote {out / 'report.html'}, {out / 'result.json'}, landscapes.csv, shift.csv; studies in "
                  f"{result.settings['storage']}")
