"""``prunescope run`` (the whole job) and ``prunescope report`` (its page, rendered again)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunescope.cli import inputs as cli_input
from prunescope.cli.options import (
    DataArg,
    DataDir,
    LimitTrain,
    LimitVal,
    ModelArg,
    ModelName,
    Out,
    Points,
    RecalibrateBN,
    TrustFactoryOption,
    Weights,
    assignments,
    check_choice,
    parse_sparsities,
    points,
)
from prunescope.cli.terminal import console, print_prunable, stage_progress, warn_if_val_is_small
from prunescope.criteria import CRITERIA
from prunescope.errors import UsageError
from prunescope.masks import check_sparsity
from prunescope.pipeline.compare import METHODS
from prunescope.pipeline.config import load_config
from prunescope.pipeline.job import run
from prunescope.prunable import PrunableShare
from prunescope.report.hparams import shift_table
from prunescope.report.html import write_html
from prunescope.report.schema import load_result
from prunescope.report.tables import (
    run_table,
)
from prunescope.trust import Trust, check_spec


def run_command(
    out: Out = Path("prunescope-out"),
    config: Annotated[Path | None, typer.Option(help="TOML file with any of run's settings.")] = None,
    model: Annotated[str | None, typer.Option(help=f"{ModelName} [mlp].")] = None,
    weights: Weights = None,
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
    methods: Annotated[str | None, typer.Option(help=f"Comma-separated: {', '.join(METHODS)} [ours, uniform, "
                                                     "global, erk, lamp; and owl, alpha for a language model].")]
    = None,
    criterion: Annotated[str | None, typer.Option(help=f"{', '.join(CRITERIA)} [magnitude; wanda for a language "
                                                       "model].")] = None,
    folds: Annotated[int | None, typer.Option(help="Cross-validate the pick on this many folds (0: off) [3; 0 for a "
                                                   "language model].")]
    = None,
    cv: Annotated[str | None, typer.Option(help="val (folds of val, from the one scan) or retrain (a model trained "
                                                "and scanned per fold of train: training variance too) [val].")]
    = None,
    max_drop: Points = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs per method [10].")] = None,
    recalibrate_bn: RecalibrateBN = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N [auto].",
                                               callback=cli_input.device)] = None,
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
        "model": model, "weights": str(weights) if weights else None, "data": data, "data_dir": data_dir,
        "epochs": epochs, "sparsity": sparsity,
        "sparsities": parse_sparsities(sparsities) if sparsities else None,
        "methods": [m.strip() for m in methods.split(",")] if methods else None, "criterion": criterion,
        "folds": folds, "cv": cv, "max_drop": points(max_drop), "finetune_epochs": finetune_epochs,
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
    if settings.criterion is not None:
        check_choice("--criterion", settings.criterion, list(CRITERIA))
    with stage_progress() as progress:
        doc = run(settings, out, progress=progress)
    console.print(run_table(doc))
    print_prunable(PrunableShare.from_dict(doc["prunable"]))
    settled = doc["settings"]
    warn_if_val_is_small(doc["dense"]["val"]["n"], min(settled["tolerance"], settled["max_drop"]) or
                         settled["tolerance"], doc.get("metric", "accuracy"))
    for sentence in doc["verdict"]:
        console.print(f"• {sentence}", highlight=False)
    console.print(f"wrote {out / 'report.html'}, {out / 'result.json'}, CSVs and checkpoints in {out}")


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
