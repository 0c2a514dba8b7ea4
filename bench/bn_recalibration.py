"""One-shot accuracy of the small BatchNorm CNN on Fashion-MNIST, with and without BN recalibration.

Per seed: train the zoo's ``cnn`` (cached in ``--work``), then :func:`prunescope.pipeline.compare.compare`
at 80 / 90 / 95 / 98% global sparsity for uniform, uniform+, global, ERK and LAMP (magnitude
criterion, no fine-tuning) twice: with the BatchNorm statistics as trained (``recalibrate_bn=0``,
val only) and re-estimated on ``--bn-batches`` batches of 128 training examples for every pruned
model (val, then test once per row). ``ours`` needs a scan and val refinement and is left out
to fit the CPU budget; ``bench/allocations.py`` compares it.

Sized for a shared 2-core CPU (~15-20 minutes for 3 seeds): the model is trained (AdamW) on a
seeded subset of ``--train`` examples for ``--epochs`` epochs, and val and test are seeded subsets
of ``--val`` / ``--test`` examples, so the dense model is weaker than a full run and every
accuracy carries a binomial error of about ±2 points (95%, 1000 examples). Raw per-seed
numbers: ``--out`` (JSON, with the command, date and machine).

    python bench/bn_recalibration.py --data-dir ../shared/data --seeds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from prunescope.data import load_dataset
from prunescope.data.types import Dataset, Split
from prunescope.models import build_model, model_spec
from prunescope.pipeline.compare import compare
from prunescope.train import TrainConfig, train

SPARSITIES = (0.8, 0.9, 0.95, 0.98)
METHODS = ("uniform", "uniform+", "global", "erk", "lamp")


def _subset(split: Split, n: int, seed: int) -> Split:
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return Split(split.x[index], split.y[index])


def smaller(data: Dataset, train_n: int, val_n: int, test_n: int, seed: int) -> Dataset:
    """``data`` with seeded subsets of its splits (the CPU budget; see the module docstring)."""
    return replace(data, train=_subset(data.train, train_n, seed), val=_subset(data.val, val_n, seed),
                   test=_subset(data.test, test_n, seed))


def rows(comparison) -> list[dict]:
    return [{"method": r.method, "sparsity": r.sparsity, "removed": r.removed, "error": r.error,
             "val": r.val.accuracy if r.val else None, "test": r.test.accuracy if r.test else None}
            for r in comparison.rows]


def run_seed(data: Dataset, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    model = build_model("cnn", data.input_shape, data.num_classes)
    spec = model_spec("cnn", data.input_shape, data.num_classes)
    started = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, optimizer="adamw", lr=args.lr, batch_size=64, seed=seed)
    trained = train(model, data, config,
                    checkpoint=args.work / f"cnn-seed{seed}.pt", model_spec=spec).model.eval()
    trained_s = time.perf_counter() - started
    stale = compare(trained, data, SPARSITIES, METHODS, test=False, recalibrate_bn=0, device="cpu")
    stale_s = time.perf_counter() - started - trained_s
    fresh = compare(trained, data, SPARSITIES, METHODS, test=True, recalibrate_bn=args.bn_batches, device="cpu")
    return {"seed": seed, "dense_val": fresh.dense_val.accuracy, "dense_test": fresh.dense_test.accuracy,
            "stale": rows(stale), "recalibrated": rows(fresh),
            "seconds": {"train": trained_s, "stale": stale_s,
                        "recalibrated": time.perf_counter() - started - trained_s - stale_s}}


def summary(runs: list[dict]) -> list[str]:
    """Markdown rows: per method and sparsity, test (recalibrated) and val (stale vs recalibrated), mean ± std."""

    def cell(values: list[float]) -> str:
        values = [100 * v for v in values]
        return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
            f"{values[0]:.1f}"

    def pick(kind: str, split: str, method: str, sparsity: float) -> list[float] | None:
        found = [next(r for r in run[kind] if r["method"] == method and r["sparsity"] == sparsity) for run in runs]
        return None if any(r["error"] for r in found) else [r[split] for r in found]

    lines = ["| method | " + " | ".join(f"{s:.0%} val stale → recal. | {s:.0%} test recal." for s in SPARSITIES)
             + " |", "| --- |" + " ---: | ---: |" * len(SPARSITIES)]
    for method in METHODS:
        cells = []
        for sparsity in SPARSITIES:
            kinds = (("stale", "val"), ("recalibrated", "val"), ("recalibrated", "test"))
            stale, fresh, test = (pick(kind, split, method, sparsity) for kind, split in kinds)
            cells += ["infeasible", "-"] if fresh is None else [f"{cell(stale)} → {cell(fresh)}", cell(test)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (cosine), batches of 64")
    parser.add_argument("--train", type=int, default=4000, help="training examples (seeded subset)")
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=2, help="recalibration batches of 128 training examples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/bn"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/bn_recalibration.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    full = load_dataset("fashion-mnist", data_dir=args.data_dir, seed=0)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": args.threads, "note": "2-core CPU shared with other jobs"},
        "settings": {"model": "cnn", "data": "fashion-mnist", "sparsities": SPARSITIES, "methods": METHODS,
                     "criterion": "magnitude", "epochs": args.epochs, "optimizer": "adamw", "lr": args.lr,
                     "batch_size": 64, "train_examples": args.train,
                     "val_examples": args.val, "test_examples": args.test, "bn_batches": args.bn_batches,
                     "bn_batch_size": 128},
        "runs": [],
    }
    for seed in range(args.seeds):
        record["runs"].append(run_seed(smaller(full, args.train, args.val, args.test, seed), seed, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))  # after every seed: a killed run keeps what it measured
        print(f"seed {seed} done: {record['runs'][-1]['seconds']}", flush=True)
    dense = [100 * r["dense_test"] for r in record["runs"]]
    print(f"dense test {statistics.fmean(dense):.1f}% over {len(dense)} seeds; accuracy % mean ± std over seeds "
          "(CPU shared with other jobs)")
    print("\n".join(summary(record["runs"])))


if __name__ == "__main__":
    main()
