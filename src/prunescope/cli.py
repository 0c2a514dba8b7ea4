"""The ``prunescope`` command. Every command is a thin call into the library."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from prunescope import models as zoo
from prunescope.checkpoint import load_checkpoint
from prunescope.criteria import CRITERIA
from prunescope.data import available_datasets, describe_dataset, load_dataset, load_from_spec
from prunescope.errors import PrunescopeError, UsageError
from prunescope.pick.baselines import ALLOCATIONS
from prunescope.pipeline import DEFAULT_SPARSITIES, run, train_model
from prunescope.report import document, listing_table, sweep_table, write_sweep
from prunescope.sweep import sweep
from prunescope.train import TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="How far can each layer, and the whole model, be pruned?",
)
console = Console()
if not console.is_terminal:
    console.width = max(console.width, 140)  # wide tables stay readable in logs and pipes

Out = Annotated[Path, typer.Option(help="Output directory; rerunning with the same one resumes.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
DataDir = Annotated[
    str | None, typer.Option(help="Folder with the dataset files (or set PRUNESCOPE_DATA_DIR).", show_default=False)
]
Seed = Annotated[int, typer.Option(help="Seed of the split, the initialisation and the shuffling.")]
Criterion = Annotated[str, typer.Option(help=f"Which weights go first: {', '.join(CRITERIA)}.")]
Allocation = Annotated[str, typer.Option(help=f"How the global sparsity is split: {', '.join(ALLOCATIONS)}.")]
Sparsities = Annotated[str, typer.Option(help="Comma-separated global sparsities in [0, 1).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
DEFAULT_SPARSITIES_TEXT = ",".join(map(str, DEFAULT_SPARSITIES))


def _parse_sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--sparsities {text!r} is not a comma-separated list of numbers, e.g. 0.5,0.9") from None
    if not values:
        raise UsageError("--sparsities is empty: give e.g. 0.5,0.7,0.9")
    return values


def _check_choice(option: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


@contextmanager
def _progress(description: str, total: int):
    """A Rich progress bar; yields a callback that advances it by one step."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda *_: progress.advance(task)


@app.command("run")
def run_command(
    out: Out = Path("prunescope-out"),
    model: Annotated[str, typer.Option(help="Zoo model or package.module:factory.")] = "mlp",
    data: Annotated[str, typer.Option(help="Dataset name or package.module:factory.")] = "digits",
    data_dir: DataDir = None,
    epochs: Epochs = 30,
    sparsities: Sparsities = DEFAULT_SPARSITIES_TEXT,
    criterion: Criterion = "magnitude",
    allocation: Allocation = "uniform",
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Train a model (offline default: an MLP on digits), sweep sparsities, print and save the results."""
    levels = _parse_sparsities(sparsities)
    _check_choice("--criterion", criterion, list(CRITERIA))
    _check_choice("--allocation", allocation, ALLOCATIONS)
    config = TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed)
    with _progress("training", epochs) as epoch_done, _progress("sweeping", len(levels) + 1) as point_done:
        result = run(
            out, model=model, data=data, data_dir=data_dir, config=config, sparsities=levels,
            criterion=criterion, allocation=allocation, device=device, on_epoch=epoch_done, on_point=point_done,
        )
    final = result.training.final
    console.print(f"dense {model} on {data}: val accuracy {final.val_accuracy:.2%} after {final.epoch} epochs")
    console.print(sweep_table(result.sweep))
    console.print(f"wrote {out / 'result.json'}, {out / 'sweep.csv'}, {out / 'model.pt'}")


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option(help="Zoo model or package.module:factory.")] = "mlp",
    data: Annotated[str, typer.Option(help="Dataset name or package.module:factory.")] = "digits",
    data_dir: DataDir = None,
    out: Out = Path("runs/model"),
    epochs: Epochs = 10,
    optimizer: Annotated[str, typer.Option(help="sgd or adamw.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 5e-4,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing in [0, 1).")] = 0.0,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Train a dense model; checkpoints every epoch to OUT/model.pt and resumes from it."""
    config = TrainConfig(
        epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        label_smoothing=label_smoothing, seed=seed,
    )
    dataset = load_dataset(data, data_dir=data_dir, seed=seed)
    with _progress(f"training {model}", epochs) as epoch_done:
        result = train_model(dataset, model, config, out, device=device, on_epoch=epoch_done)
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
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint written by prunescope train.")],
    sparsities: Sparsities = DEFAULT_SPARSITIES_TEXT,
    criterion: Criterion = "magnitude",
    allocation: Allocation = "uniform",
    include: Annotated[list[str] | None, typer.Option(help="Glob of layers to prune (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob of layers to keep dense (repeatable).")] = None,
    subset: Annotated[int | None, typer.Option(help="Evaluate on a seeded subset of this many examples.")] = None,
    data_dir: DataDir = None,
    out: Out = Path("prunescope-out"),
    device: Device = "auto",
) -> None:
    """One-shot prune at each sparsity, evaluate on val, restore; print and save a table."""
    levels = _parse_sparsities(sparsities)
    _check_choice("--criterion", criterion, list(CRITERIA))
    _check_choice("--allocation", allocation, ALLOCATIONS)
    saved = load_checkpoint(checkpoint)
    dataset = load_from_spec(saved.dataset_spec, data_dir=data_dir)
    with _progress("sweeping", len(levels) + 1) as point_done:
        result = sweep(
            saved.model, dataset, levels, criterion=criterion, allocation=allocation, include=include or (),
            exclude=exclude or (), subset=subset, device=device, on_point=point_done,
        )
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "criterion": criterion,
                "allocation": allocation, "include": include or [], "exclude": exclude or [], "subset": subset}
    doc = document("sweep", settings, model=saved.model_spec, dataset=saved.dataset_spec, sweep=result.to_dict())
    write_sweep(out, doc, result)
    console.print(sweep_table(result))
    console.print(f"wrote {out / 'result.json'} and {out / 'sweep.csv'}")


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input and failures end with one line on stderr, never a traceback.

    Typer itself reports usage errors (exit code 2) and Ctrl-C; prunescope's own errors
    are caught here.
    """
    try:
        app(args=argv)
    except PrunescopeError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
