"""``prunescope train``, ``gradual`` and ``baseline``: dense training, gradual pruning, scratch baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunescope.apply import export
from prunescope.cli.options import (
    Allocation,
    BatchSize,
    CheckpointOption,
    DataArg,
    DataDir,
    Device,
    Epochs,
    LabelSmoothing,
    LimitTrain,
    LimitVal,
    ModelArg,
    ModelName,
    Optimizer,
    Out,
    Seed,
    TrustFactoryOption,
    WeightDecay,
    Weights,
    assignments,
    check_choice,
    checkpoint_and_data,
    data_choice,
)
from prunescope.cli.terminal import console, print_prunable, progress_bar
from prunescope.data import load_dataset
from prunescope.evaluate import Evaluator
from prunescope.io import write_json
from prunescope.masks import check_sparsity
from prunescope.pick.allocator import Problem
from prunescope.pick.registry import WEIGHT_METHODS, weight_allocation
from prunescope.pipeline.job import train_model
from prunescope.prunable import prunable_share
from prunescope.report.schema import document
from prunescope.report.tables import (
    history_table,
    listing_table,
)
from prunescope.targets import effective_weight, find_targets
from prunescope.train import (
    TrainConfig,
    gradual_prune,
    iterative_schedule,
    polynomial_schedule,
    train_scratch,
)


def train_command(
    model: Annotated[str, typer.Option(help=f"{ModelName}.")] = "mlp",
    weights: Weights = None,
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
    with progress_bar(f"training {model}", epochs) as epoch_done:
        result = train_model(dataset, model, config, out, model_args=assignments("--model-arg", model_arg),
                             weights=weights, device=device, on_epoch=epoch_done)
    console.print(history_table(f"{model} on {data}", result.history))
    console.print(f"checkpoint: {out / 'model.pt'}")


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
    check_choice("--schedule", schedule, ("polynomial", "iterative"))
    check_choice("--allocation", allocation, WEIGHT_METHODS)
    sparsities = (polynomial_schedule(initial_sparsity, target_sparsity, steps) if schedule == "polynomial"
                  else iterative_schedule(target_sparsity, fraction))
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    model = saved.model
    targets = find_targets(model)
    prunable = print_prunable(prunable_share(model, targets, dataset.input_shape))
    with progress_bar("pruning steps", len(sparsities)) as step_done:
        result = gradual_prune(
            # A new problem per call: a re-pick reads the weights as they are at that step.
            model, dataset, lambda s: weight_allocation(allocation, Problem(
                model=model, targets=targets, example=dataset.train.x[:2], train=dataset.train), s), sparsities,
            TrainConfig(epochs=epochs_per_step, optimizer=optimizer, lr=lr, batch_size=batch_size,
                        weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed),
            repick=not fixed, device=device,
            checkpoint_dir=out / "steps", model_spec=saved.model_spec, seed=seed, on_step=step_done,
        )
    export(result.model, out / "model.pt", saved.model_spec, saved.dataset_spec, meta={"pruned_from": str(checkpoint)})
    write_json(out / "result.json", document("gradual", {"checkpoint": str(checkpoint), "schedule": schedule,
                                                         "sparsities": sparsities, "allocation": allocation},
                                             model=saved.model_spec, dataset=saved.dataset_spec,
                                             prunable=prunable, gradual=result.to_dict()))
    rows = [[str(st.step), f"{st.sparsity:.1%}", f"{st.achieved_sparsity:.2%}", f"{st.val['accuracy']:.2%}"]
            for st in result.steps]
    console.print(listing_table(f"{schedule} pruning to {target_sparsity:.0%} ({allocation} allocation)",
                                ["step", "target", "achieved", "val accuracy"], rows))
    console.print(f"wrote {out / 'model.pt'} and {out / 'result.json'}")


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
    check_choice("--scratch", scratch.upper(), ("E", "B"))
    data = data_choice(data_dir, data_arg, limit_train, limit_val)
    saved, dataset = checkpoint_and_data(checkpoint, data, trust_factory, model_arg)
    targets = find_targets(saved.model)
    masks = {t.name: effective_weight(saved.model, t) != 0 for t in targets}
    pruned_accuracy = Evaluator(saved.model, dataset.val, device=device).evaluate().accuracy
    with progress_bar(f"scratch-{scratch.upper()}", None) as epoch_done:
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
