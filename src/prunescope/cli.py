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
from prunescope.compare import METHODS, compare
from prunescope.criteria import CRITERIA
from prunescope.data import available_datasets, describe_dataset, load_dataset, load_from_spec
from prunescope.errors import PrunescopeError, UsageError
from prunescope.io import write_json
from prunescope.pick.baselines import ALLOCATIONS
from prunescope.pick.choose import build_picker, choose
from prunescope.pipeline import DEFAULT_SPARSITIES, run, train_model
from prunescope.report import (
    choice_table,
    comparison_table,
    document,
    listing_table,
    scan_table,
    sweep_table,
    write_comparison,
    write_sweep,
)
from prunescope.scan import STRATEGIES, scan
from prunescope.scan.files import JOURNAL_FILE, SCAN_FILE, load_scan, save_scan
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
Points = Annotated[float | None, typer.Option(help="Allowed drop in points of the metric (0.5 = half a point).")]
Include = Annotated[list[str] | None, typer.Option(help="Glob of layers to prune (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option(help="Glob of layers to keep dense (repeatable).")]
CheckpointOption = Annotated[Path, typer.Option(help="A checkpoint written by prunescope train.")]




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
    checkpoint: CheckpointOption,
    sparsities: Sparsities = DEFAULT_SPARSITIES_TEXT,
    criterion: Criterion = "magnitude",
    allocation: Allocation = "uniform",
    include: Include = None,
    exclude: Exclude = None,
    subset: Annotated[int | None, typer.Option(help="Evaluate on a seeded subset of this many examples.")] = None,
    data_dir: DataDir = None,
    out: Out = Path("prunescope-out"),
    device: Device = "auto",
) -> None:
    """One-shot prune at each sparsity, evaluate on val, restore; print and save a table."""
    levels = _parse_sparsities(sparsities)
    _check_choice("--criterion", criterion, list(CRITERIA))
    _check_choice("--allocation", allocation, ALLOCATIONS)
    saved, dataset = _checkpoint_and_data(checkpoint, data_dir)
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


def _checkpoint_and_data(checkpoint: Path, data_dir: str | None):
    saved = load_checkpoint(checkpoint)
    return saved, load_from_spec(saved.dataset_spec, data_dir=data_dir)


def _points(value: float | None) -> float | None:
    return None if value is None else value / 100


@contextmanager
def _growing_progress(description: str):
    """A progress bar whose total can grow (adaptive scans plan as they go)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, planned: progress.update(task, completed=done, total=planned)


@app.command("scan")
def scan_command(
    checkpoint: CheckpointOption,
    out: Out = Path("prunescope-out/scan"),
    strategy: Annotated[str, typer.Option(help="adaptive (few evaluations) or grid (sconce's 18 levels).")]
    = "adaptive",
    criterion: Criterion = "magnitude",
    tolerance: Annotated[float, typer.Option(help="Allowed drop in points; adaptive refines where curves cross it.")]
    = 0.5,
    subset: Annotated[int | None, typer.Option(help="Start on a seeded subset of this many val examples; grown "
                                                    "where a decision is within noise.")] = None,
    workers: Annotated[int, typer.Option(help="Processes sharing the study.")] = 1,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: a journal file in OUT).")] = None,
    include: Include = None,
    exclude: Exclude = None,
    data_dir: DataDir = None,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Sensitivity of every layer: val metric vs that layer's sparsity, others dense. Resumable."""
    _check_choice("--strategy", strategy, STRATEGIES)
    _check_choice("--criterion", criterion, list(CRITERIA))
    saved, dataset = _checkpoint_and_data(checkpoint, data_dir)
    settings = {"checkpoint": str(checkpoint), "strategy": strategy, "criterion": criterion,
                "tolerance": tolerance / 100, "subset": subset, "workers": workers, "include": include or [],
                "exclude": exclude or [], "seed": seed}
    with _growing_progress("scanning") as advance:
        curves = scan(
            saved.model, dataset, criterion=criterion, strategy=strategy, tolerance=tolerance / 100, subset=subset,
            include=include or (), exclude=exclude or (), device=device, storage=storage or out / JOURNAL_FILE,
            workers=workers, seed=seed, on_trial=advance,
        )
    save_scan(out, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
              dataset_spec=saved.dataset_spec, settings=settings)
    console.print(scan_table(curves, tolerance / 100))
    console.print(f"{curves.evaluations} evaluations ({curves.reused} reused from the study), "
                  f"{curves.examples / len(dataset.val):.1f} full-split equivalents; wrote {out / SCAN_FILE}, "
                  f"{out / 'scan.csv'}, {out / 'plots' / 'curves.png'}")


@app.command("pick")
def pick_command(
    scan_dir: Annotated[Path, typer.Option("--scan", help="Directory written by prunescope scan.")],
    picker: Annotated[str, typer.Option(help="threshold, sconce, knee, budget or ensemble.")] = "ensemble",
    max_drop: Points = None,
    target_sparsity: Annotated[float | None, typer.Option(help="Budget: fraction of weights to remove.")] = None,
    target_params: Annotated[int | None, typer.Option(help="Budget: weights to keep, at most.")] = None,
    target_macs: Annotated[int | None, typer.Option(help="Budget: effective MACs per sample, at most.")] = None,
    lower_bound: Annotated[bool, typer.Option(help="Threshold on the pessimistic end of each interval.")] = False,
    vote: Annotated[bool, typer.Option(help="Ensemble by median instead of the most conservative member.")] = False,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to verify on (default: the scanned one).")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the pick (default: SCAN/pick.json).")] = None,
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """Choose per-layer sparsities from a scan, then verify them jointly on val (backing off if needed)."""
    chosen = build_picker(picker, max_drop=_points(max_drop), target_sparsity=target_sparsity,
                          target_params=target_params, target_macs=target_macs, lower_bound=lower_bound, vote=vote)
    saved_scan = load_scan(scan_dir)
    source = checkpoint or saved_scan.checkpoint
    if source is None:
        raise UsageError(f"the scan in {scan_dir} names no checkpoint: pass --checkpoint")
    saved, dataset = _checkpoint_and_data(Path(source), data_dir)
    saved_scan.check_model(saved.model, scan_dir)
    with _progress("verifying", 1) as done:
        choice = choose(saved_scan.curves, chosen, saved.model, dataset, max_drop=_points(max_drop), device=device)
        done()
    path = out or scan_dir / "pick.json"
    settings = {"scan": str(scan_dir), "checkpoint": str(source), "picker": picker, "max_drop": _points(max_drop),
                "target_sparsity": target_sparsity, "target_params": target_params, "target_macs": target_macs,
                "lower_bound": lower_bound, "vote": vote}
    write_json(path, document("pick", settings, model=saved.model_spec, dataset=saved.dataset_spec,
                              **choice.to_dict()))
    console.print(choice_table(choice))
    if choice.bound is not None and not choice.verified.within_bound:
        console.print(f"[yellow]even dense the joint drop exceeds {choice.bound * 100:g} pts[/yellow]")
    console.print(f"wrote {path}")


@app.command("compare")
def compare_command(
    checkpoint: CheckpointOption,
    sparsities: Sparsities = "0.8,0.9,0.95,0.98",
    allocations: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METHODS)}.")] = ",".join(METHODS),
    scan_dir: Annotated[Path | None, typer.Option("--scan", help="Scan for 'ours' (default: scan OUT/scan now).")]
    = None,
    criterion: Criterion = "magnitude",
    include: Include = None,
    exclude: Exclude = None,
    test: Annotated[bool, typer.Option(help="Evaluate the test split once per row, after selection.")] = True,
    out: Out = Path("prunescope-out/compare"),
    data_dir: DataDir = None,
    device: Device = "auto",
) -> None:
    """One-shot accuracy of our allocation vs uniform, uniform+, global, ERK and LAMP at equal sparsity."""
    levels = _parse_sparsities(sparsities)
    methods = [m.strip() for m in allocations.split(",") if m.strip()]
    for method in methods:
        _check_choice("allocation", method, METHODS)
    _check_choice("--criterion", criterion, list(CRITERIA))
    saved, dataset = _checkpoint_and_data(checkpoint, data_dir)
    curves = None
    if "ours" in methods:
        if scan_dir is None:
            scan_dir = out / "scan"
            with _growing_progress("scanning") as advance:
                curves = scan(saved.model, dataset, criterion=criterion, include=include or (),
                              exclude=exclude or (), device=device, storage=scan_dir / JOURNAL_FILE,
                              on_trial=advance)
            save_scan(scan_dir, curves, model=saved.model, checkpoint=str(checkpoint), model_spec=saved.model_spec,
                      dataset_spec=saved.dataset_spec, settings={"criterion": criterion, "tolerance": 0.005})
        else:
            saved_scan = load_scan(scan_dir)
            saved_scan.check_model(saved.model, scan_dir)
            curves = saved_scan.curves
    with _progress("comparing", len(levels) * len(methods)) as row_done:
        comparison = compare(saved.model, dataset, levels, methods, curves=curves, criterion=criterion,
                             include=include or (), exclude=exclude or (), device=device, test=test, on_row=row_done)
    settings = {"checkpoint": str(checkpoint), "sparsities": levels, "allocations": methods,
                "scan": str(scan_dir) if scan_dir else None, "criterion": criterion, "test": test}
    doc = document("compare", settings, model=saved.model_spec, dataset=saved.dataset_spec,
                   comparison=comparison.to_dict())
    write_comparison(out, doc, comparison)
    console.print(comparison_table(comparison))
    console.print(f"wrote {out / 'result.json'}, {out / 'compare.csv'} and plots in {out / 'plots'}")


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
