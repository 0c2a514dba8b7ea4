"""The main job, end to end: data → dense model (trained or resumed) → sparsity sweep → result files.

Every stage is cached in the output directory: the trained model is ``model.pt`` (training
resumes from it), and the results are written atomically at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunescope.data import load_dataset
from prunescope.data.types import Dataset
from prunescope.models import build_model, model_spec
from prunescope.report import document, write_sweep
from prunescope.sweep import SweepPoint, SweepResult, sweep
from prunescope.train import EpochRecord, TrainConfig, TrainResult, train

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class RunResult:
    out: Path
    data: Dataset
    training: TrainResult
    sweep: SweepResult


def train_model(
    data: Dataset,
    model_name: str,
    config: TrainConfig,
    out: Path,
    *,
    device: str = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Build ``model_name`` for ``data`` and train it, checkpointing to ``out/model.pt``."""
    spec = model_spec(model_name, data.input_shape, data.num_classes)
    torch.manual_seed(config.seed)
    model = build_model(model_name, data.input_shape, data.num_classes)
    return train(model, data, config, device=device, checkpoint=out / "model.pt", model_spec=spec, on_epoch=on_epoch)


def run(
    out: str | Path = "prunescope-out",
    *,
    model: str = "mlp",
    data: str = "digits",
    data_dir: str | None = None,
    config: TrainConfig | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    criterion: str = "magnitude",
    allocation: str = "uniform",
    device: str = "auto",
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> RunResult:
    """Train ``model`` on ``data`` (or resume it), sweep ``sparsities`` and write the results to ``out``."""
    out = Path(out)
    config = config or TrainConfig(epochs=30, lr=0.05, batch_size=64)
    dataset = load_dataset(data, data_dir=data_dir, seed=config.seed)
    training = train_model(dataset, model, config, out, device=device, on_epoch=on_epoch)
    result = sweep(
        training.model, dataset, sparsities, criterion=criterion, allocation=allocation, device=device,
        on_point=on_point,
    )
    settings = {"model": model, "data": data, "sparsities": list(sparsities), "criterion": criterion,
                "allocation": allocation, "device": device, "train": config.to_dict()}
    doc = document(
        "run", settings,
        model=model_spec(model, dataset.input_shape, dataset.num_classes),
        dataset=dataset.spec,
        training={"history": [asdict(r) for r in training.history]},
        sweep=result.to_dict(),
    )
    write_sweep(out, doc, result)
    return RunResult(out=out, data=dataset, training=training, sweep=result)
