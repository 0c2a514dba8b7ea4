"""One-shot pruning with calibration data: OBS reconstruction and Wanda against plain masking.

For each model (LeNet-300-100 and LeNet-5 on MNIST, the small ``cnn`` on Fashion-MNIST),
seed and global sparsity (80 / 90 / 95 / 98%), and each allocation (uniform, global
magnitude, ERK, LAMP: per-layer counts fixed by the allocation), three ways to prune, no
fine-tuning:

- ``plain``: magnitude masks, weights untouched (what ``compare`` measures today);
- ``refit``: the same masks, each layer's kept weights and bias re-fitted by least squares
  to the dense layer's outputs, fed the already pruned layers' outputs
  (``reconstruct(select="mask")``);
- ``lsq``: the same masks, each layer re-fitted on the *dense* network's inputs, independently
  of the layers before it (the plain least-squares re-fit);
- ``obs``: masks chosen by OBS saliency in a SparseGPT sweep, then the exact re-fit
  (``reconstruct(select="obs")``);

and ``wanda`` (plain, row-wise Wanda scores) under the global counts. Models with
BatchNorm get their statistics re-estimated on 20 train batches after pruning, every
method alike. 1024 calibration examples from train (no labels). The configuration
called "best" per sparsity is chosen on val; test is read once per configuration.
Per-seed raw results go to ``WORK/oneshot.json``.

    python bench/oneshot.py --data-dir ../shared/data --seeds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from allocations import MODELS, dense_model
from rich.console import Console
from rich.table import Table

from prunescope.calibration import calibration_inputs
from prunescope.criteria import compute_scores
from prunescope.data import load_dataset
from prunescope.evaluate import Evaluator
from prunescope.masks import compute_masks
from prunescope.pick.baselines import allocate
from prunescope.reconstruct import reconstruct
from prunescope.targets import find_targets
from prunescope.train import recalibrate_batchnorm

SPARSITIES = (0.8, 0.9, 0.95, 0.98)
ALLOCATIONS = ("uniform", "global", "erk", "lamp")
MODES = ("plain", "lsq", "refit", "obs")
# Every allocation plain and re-fitted; the least-squares baseline and OBS selection under global counts only.
CONFIGS = [(a, m) for a in ALLOCATIONS for m in ("plain", "refit")] + [("global", "lsq"), ("global", "obs")]
console = Console(width=160)


def prune_one(dense: torch.nn.Module, data, allocation: dict, mode: str, calibration: torch.Tensor) -> tuple:
    """A pruned copy of ``dense`` under ``allocation`` and ``mode``, and the seconds the pruning took."""
    model = _copy(dense)
    targets = find_targets(model)
    start = time.perf_counter()
    if mode == "wanda":
        scores = compute_scores(model, targets, "wanda", data=data.train, calibration=len(calibration))
    else:
        scores = compute_scores(model, targets, "magnitude")
    masks = compute_masks(scores, allocation)
    if mode in ("plain", "wanda"):
        with torch.no_grad():
            for t in targets:
                model.get_submodule(t.module).weight.mul_(masks[t.name])
    else:
        select = "obs" if mode == "obs" else "mask"
        reconstruct(model, targets, allocation, calibration, masks=masks, select=select, sequential=mode != "lsq")
    seconds = time.perf_counter() - start
    recalibrate_batchnorm(model, data.train, batches=20)
    return model, seconds


def run_seed(name: str, data, seed: int, args: argparse.Namespace) -> dict:
    dense, _ = dense_model(name, data, seed, args.work)
    targets = find_targets(dense)
    calibration = calibration_inputs(data.train, args.calibration, seed=seed)
    rows = []
    for sparsity in SPARSITIES:
        configs = [*CONFIGS, ("global", "wanda")]
        for allocation_name, mode in configs:
            allocation = allocate(allocation_name, dense, targets, sparsity)
            model, seconds = prune_one(dense, data, allocation, mode, calibration)
            row = {"sparsity": sparsity, "allocation": allocation_name, "mode": mode, "seconds": seconds}
            for split in ("val", "test"):
                row[split] = Evaluator(model, getattr(data, split), batch_size=512).evaluate().accuracy
            rows.append(row)
    dense_acc = {s: Evaluator(dense, getattr(data, s), batch_size=512).evaluate().accuracy for s in ("val", "test")}
    return {"model": name, "seed": seed, "dense": dense_acc, "rows": rows}


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {statistics.stdev(values) * 100:.2f}"


def print_model(name: str, runs: list[dict]) -> None:
    table = Table(
        title=f"{name}: one-shot test accuracy % (mean ± std over {len(runs)} seeds), no fine-tuning; "
        f"dense {_cell([r['dense']['test'] for r in runs])}"
    )
    table.add_column("allocation / mode")
    for s in SPARSITIES:
        table.add_column(f"{s:.0%}", justify="right")
    table.add_column("s per pruning", justify="right")
    keys = dict.fromkeys((row["allocation"], row["mode"]) for row in runs[0]["rows"])
    for allocation, mode in keys:
        cells = []
        for s in SPARSITIES:
            test = [
                r["test"]
                for run in runs
                for r in run["rows"]
                if (r["allocation"], r["mode"], r["sparsity"]) == (allocation, mode, s)
            ]
            cells.append(_cell(test))
        seconds = [
            r["seconds"] for run in runs for r in run["rows"] if (r["allocation"], r["mode"]) == (allocation, mode)
        ]
        table.add_row(f"{allocation} / {mode}", *cells, f"{statistics.fmean(seconds):.2f}")
    best = []
    for s in SPARSITIES:
        # Chosen on val (mean over seeds), reported on test.
        def val_mean(key: tuple[str, str], s: float = s) -> float:
            return statistics.fmean(
                r["val"]
                for run in runs
                for r in run["rows"]
                if (r["allocation"], r["mode"], r["sparsity"]) == (*key, s)
            )

        key = max(keys, key=val_mean)
        test = [
            r["test"] for run in runs for r in run["rows"] if (r["allocation"], r["mode"], r["sparsity"]) == (*key, s)
        ]
        baseline = [
            r["test"]
            for run in runs
            for r in run["rows"]
            if (r["allocation"], r["mode"], r["sparsity"]) == ("global", "lsq", s)
        ]
        paired = [a - b for a, b in zip(test, baseline, strict=True)]
        best.append(f"{'/'.join(key)}: {_cell(test)} (vs global/lsq {_cell(paired)})")
    table.add_row("best on val (paired Δ)", *best, "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with mnist/ and fashion-mnist/ (IDX files)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("prunescope-out/bench-allocations"),
        help="cache of dense models (shared with bench/allocations.py)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/oneshot.json"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calibration", type=int, default=1024, help="train examples used as calibration data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="print the tables of --out")
    args = parser.parse_args()
    if args.report_only:
        record = json.loads(args.out.read_text())
        for name in dict.fromkeys(r["model"] for r in record["runs"]):
            print_model(name, [r for r in record["runs"] if r["model"] == name])
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python bench/oneshot.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "report_only"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "note": "2-core CPU shared with other jobs",
        },
        "settings": {
            "sparsities": SPARSITIES,
            "models": {m: MODELS[m] for m in args.models.split(",")},
            "calibration": args.calibration,
            "bn_recalibration_batches": 20,
        },
        "runs": [],
    }
    if args.out.exists():  # resume: keep the finished (model, seed) runs of an earlier invocation
        earlier = json.loads(args.out.read_text())
        if earlier["settings"]["calibration"] == args.calibration:
            record["runs"] = earlier["runs"]
    for name in args.models.split(","):
        data = load_dataset(MODELS[name][0], data_dir=args.data_dir)
        runs = [r for r in record["runs"] if r["model"] == name]
        for seed in range(args.seeds):
            if any(r["seed"] == seed for r in runs):
                continue
            start = time.perf_counter()
            runs.append(run_seed(name, data, seed, args))
            record["runs"].append(runs[-1])
            args.out.write_text(json.dumps(record, indent=1))
            console.print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s")
        print_model(name, runs)


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    main()
