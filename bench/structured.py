"""Structured (channel) pruning at 2× and 3× fewer MACs: ours vs uniform vs global, accuracy and latency.

ResNet-56 and the small VGG on Fashion-MNIST, zero-padded from 28×28 to 32×32 in this script
(``torch.nn.functional.pad(x, (2, 2, 2, 2))`` on the train, val and test tensors after
prunescope's normalisation, so the border is 0 in normalised units, the mean intensity; one
input channel). Per model and seed:

1. train the dense model (SGD, cosine; cached in ``--work``, resumed if interrupted);
2. channel scan (``granularity="channel"``, ``criterion="l2"``, grid of ``--levels``, on a
   seeded val subset of ``--subset`` examples that never grows; cached as JSON);
3. at each MAC target (dense MACs / 2 and / 3, exact MACs per sample of the pruned model):
   ``ours`` (the budget pick of the scan, :func:`ours_allocation`), ``uniform`` (one channel
   ratio for every group) and ``global`` (Torch-Pruning's global group-L2 ranking), see
   :mod:`prunescope.structured.baselines`; each physically pruned with
   :func:`prunescope.apply.prune_channels` (L2 group importance), its one-shot val accuracy
   taken, fine-tuned for ``--finetune-epochs`` at ``--finetune-lr`` (every method the same),
   and its test accuracy measured once at the end;
4. latency of every pruned model and, right before it, of the dense model (a pair sees the
   same load on a shared machine), at batch 1 and 256 (median of ``--repeats`` timed passes
   after 3 warm-up passes, ``torch.set_num_threads(--threads)``) on the CPU, and on CUDA when
   present.
   The issue's goal: speed-up ≥ 0.7 × MAC reduction at batch 256 on the GPU; the tables give
   the ratio speed-up / MAC reduction. Without a GPU they say "no GPU".

Per-(model, seed) results go to ``<work>/structured.json`` as each finishes; a rerun with the
same settings skips those. Tables: test accuracy mean ± std over seeds per model × target ×
method, and latency speed-ups next to the MAC reduction actually reached.

The defaults are a short schedule for a shared 2-core CPU: 2,000 stratified train examples,
4 dense epochs at lr 0.05 and 1 fine-tuning epoch at lr 0.01, both SGD with batch 32 (more
steps than batch 128 for the same CPU time: at batch 128, 3 epochs of 2,000 examples left
ResNet-56 at 39% val accuracy); val = 1/60 of the train split (1,000 examples); scan levels
0.25 / 0.5 / 0.75 on 300 of them; test on a seeded sample of 2,000 test examples (the same
for every model); latency median of 5 passes. On a 2-core CPU shared with other jobs
(2026-11-23, torch 2.13.0, 1 thread) both models × 3 seeds took 21.5 minutes: ResNet-56
5.5 to 7.5 min per seed (train 1.2–1.5, scan 1–2, the six pruned models 3–3.5), VGG 1 min.
Dense val accuracy 73% (ResNet-56) and 81% (VGG): undertrained at this budget, so compare
methods with each other, not with the literature. A longer run, for a faster machine: e.g. ``--limit-train 20000
--epochs 10 --finetune-epochs 3 --subset 500 --test-subset 0 --repeats 20``.

    python bench/structured.py --data-dir ../shared/data --seeds 1 --models vgg   # iterate
    nohup python bench/structured.py > /tmp/structured_bench.log 2>&1 &             # $PRUNESCOPE_DATA_DIR
    python bench/structured.py --report-only                                        # tables of a (partial) run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import prunescope
from prunescope.apply import prune_channels
from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.data.registry import DATA_DIR_ENV
from prunescope.data.types import Dataset, Split
from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.measure import LATENCY_BATCHES, count_macs, measure_latency
from prunescope.models import build_model, model_spec
from prunescope.pick.budget import BudgetPicker
from prunescope.scan import scan
from prunescope.structured.baselines import global_channels, uniform_channels
from prunescope.structured.find import find_groups
from prunescope.structured.importance import group_scores
from prunescope.structured.pruning import ChannelPruning
from prunescope.train import TrainConfig, train

MODELS = ("resnet56", "vgg")
REDUCTIONS = (2, 3)  # target MACs = dense MACs / reduction
METHODS = ("ours", "uniform", "global")
GOAL_RATIO = 0.7  # the issue: speed-up >= 0.7 x MAC reduction at batch 256 on the GPU
CRITERION = "l2"
PAD = (2, 2, 2, 2)  # 28x28 -> 32x32
console = Console(width=None if sys.stdout.isatty() else 160)  # logs under nohup stay readable


# --------------------------------------------------------------------------- data


def padded(data: Dataset) -> Dataset:
    """``data`` with every image zero-padded by 2 pixels per side (28×28 → 32×32, CIFAR's size)."""

    def pad(split: Split) -> Split:
        return Split(F.pad(split.x, PAD), split.y)

    height, width = data.input_shape[1:]
    return dataclasses.replace(
        data,
        train=pad(data.train),
        val=pad(data.val),
        test=pad(data.test),
        input_shape=(data.input_shape[0], height + PAD[2] + PAD[3], width + PAD[0] + PAD[1]),
        spec={**data.spec, "pad": list(PAD)},
    )


# --------------------------------------------------------------------------- ours


def ours_allocation(curves: Curves, pruning: ChannelPruning, target_macs: int) -> dict[str, float]:
    """OURS: the budget pick of the channel scan whose exact MACs per sample are at most ``target_macs``.

    :class:`~prunescope.pick.budget.BudgetPicker` on the channel curves (least predicted
    drop, multiple-choice knapsack), its budget met against the exact footprint of the
    pruned model (``pruning.footprint``, same ``round_to``).
    """
    picker = BudgetPicker(target_macs=target_macs, round_to=pruning.round_to, footprint=pruning.footprint)
    return picker.pick(curves).allocation


# --------------------------------------------------------------------------- one seed


def dense_model(name: str, data: Dataset, seed: int, args: argparse.Namespace) -> tuple[torch.nn.Module, list]:
    """The trained dense model of ``seed`` (checkpointed in ``--work``, so an interrupted run resumes)."""
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    spec = model_spec(name, data.input_shape, data.num_classes)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed)
    result = train(
        model, data, config, device=args.device, checkpoint=args.work / f"{name}-seed{seed}.pt", model_spec=spec
    )
    return result.model.eval(), [dataclasses.asdict(record) for record in result.history]


def channel_scan(name: str, model: torch.nn.Module, data: Dataset, seed: int, args: argparse.Namespace) -> Curves:
    """The channel scan of ``model`` (cached as JSON in ``--work``)."""
    path = args.work / f"{name}-seed{seed}-scan.json"
    if path.exists():
        return Curves.from_dict(json.loads(path.read_text()))
    curves = scan(
        model,
        data,
        criterion=CRITERION,
        granularity="channel",
        strategy="grid",
        levels=args.levels,
        subset=args.subset,
        max_subset=args.subset,  # a fixed-cost scan: points within noise are not re-measured
        device=str(args.device),
        seed=seed,
    )
    path.write_text(json.dumps(curves.to_dict()))
    return curves


def latencies(model: torch.nn.Module, shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, float]:
    """Median ms per batch, ``{"cpu@1": …, "cpu@256": …}`` and the same for ``cuda`` when present."""
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    return {
        f"{device}@{batch}": measure_latency(
            model, shape, device=device, batch_size=batch, warmup=3, repeats=args.repeats
        ).median_ms
        for device in devices
        for batch in LATENCY_BATCHES
    }


def test_accuracy(model: torch.nn.Module, data: Dataset, args: argparse.Namespace) -> float:
    """Accuracy on the test split, or on the same seeded sample of it for every model (``--test-subset``)."""
    return Evaluator(model, data.test, device=args.device, subset=args.test_subset or None).evaluate().accuracy


def pruned_run(
    dense: torch.nn.Module, spec: dict, data: Dataset, allocation: dict[str, float], seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Prune a copy of ``dense`` to ``allocation``, fine-tune it, test it, time it."""
    model = copy.deepcopy(dense)
    pruned = prune_channels(model, spec, allocation, importance=CRITERION)
    one_shot = Evaluator(model, data.val, device=args.device).evaluate().accuracy
    config = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size, seed=seed)
    model = train(model, data, config, device=args.device).model.eval()
    return {
        "allocation": allocation,
        "macs": count_macs(model, data.input_shape).dense,
        "params": pruned.pruned.params,
        "one_shot_val": one_shot,
        "test": test_accuracy(model, data, args),
        # The dense model timed right before: on a shared machine the load drifts, a pair sees the same load.
        "dense_latency_ms": latencies(dense, data.input_shape, args),
        "latency_ms": latencies(model, data.input_shape, args),
    }


def run_seed(name: str, data: Dataset, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Everything of one (model, seed): dense, scan, and every method at every MAC target."""
    clock = {"start": time.perf_counter()}
    dense, history = dense_model(name, data, seed, args)
    clock["train"] = time.perf_counter()
    curves = channel_scan(name, dense, data, seed, args)
    clock["scan"] = time.perf_counter()
    spec = model_spec(name, data.input_shape, data.num_classes)
    groups = find_groups(dense, data.input_shape)
    pruning = ChannelPruning(groups, group_scores(groups, CRITERION))
    dense_macs = count_macs(dense, data.input_shape).dense
    targets = {}
    for reduction in REDUCTIONS:
        target = dense_macs // reduction
        allocations = {
            "ours": ours_allocation(curves, pruning, target),
            "uniform": uniform_channels(pruning, target),
            "global": global_channels(pruning, target),
        }
        targets[str(reduction)] = {"target_macs": target, "methods": {}}
        for method, allocation in allocations.items():
            result = pruned_run(dense, spec, data, allocation, seed, args)
            if result["macs"] > target:
                raise RuntimeError(f"{name} {method} at {reduction}x: {result['macs']} MACs exceed {target}")
            targets[str(reduction)]["methods"][method] = result
            console.log(
                f"{name} seed {seed} {reduction}x {method}: {dense_macs / result['macs']:.2f}x fewer MACs, "
                f"one-shot val {result['one_shot_val']:.2%}, test {result['test']:.2%}"
            )
    clock["end"] = time.perf_counter()
    return {
        "model": name,
        "seed": seed,
        "history": history,
        "dense": {
            "macs": dense_macs,
            "val": Evaluator(dense, data.val, device=args.device).evaluate().accuracy,
            "test": test_accuracy(dense, data, args),
            "latency_ms": latencies(dense, data.input_shape, args),
        },
        "scan": {"evaluations": curves.evaluations, "examples": curves.examples},
        "targets": targets,
        "seconds": {
            "train": clock["train"] - clock["start"],
            "scan": clock["scan"] - clock["train"],
            "prune_finetune_test": clock["end"] - clock["scan"],
            "total": time.perf_counter() - clock["start"],
        },
    }


# --------------------------------------------------------------------------- tables


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    """Mean ± sample std (percent by default); the mean alone for one value."""
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}{unit}"


def accuracy_table(name: str, runs: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    tested = f"a seeded sample of {args.test_subset:,}" if args.test_subset else "all 10,000"
    table = Table(
        title=f"{name} on Fashion-MNIST 32×32, {args.limit_train:,} train examples, {args.epochs} dense epochs, "
        f"{args.finetune_epochs} fine-tuning epoch(s) per method; test on {tested}: accuracy %, mean ± std over seeds "
        f"{[r['seed'] for r in runs]}"
    )
    for column in ("target", "method", "MAC reduction reached", "one-shot val", "test (fine-tuned)"):
        table.add_column(column, justify="right")
    table.add_row(
        "",
        "dense",
        "1.00×",
        _mean_std([r["dense"]["val"] for r in runs]),
        _mean_std([r["dense"]["test"] for r in runs]),
    )
    for reduction in REDUCTIONS:
        for method in METHODS:
            results = [r["targets"][str(reduction)]["methods"][method] for r in runs]
            reached = [r["dense"]["macs"] / m["macs"] for r, m in zip(runs, results, strict=True)]
            table.add_row(
                f"{reduction}× fewer MACs" if method == METHODS[0] else "",
                method,
                _mean_std(reached, scale=1.0, unit="×"),
                _mean_std([m["one_shot_val"] for m in results]),
                _mean_std([m["test"] for m in results]),
            )
    return table


def _speedups(runs: list[dict[str, Any]], reduction: int, method: str, key: str) -> list[float]:
    """Per seed, the dense model's latency over the pruned one's, timed as a pair."""
    results = [r["targets"][str(reduction)]["methods"][method] for r in runs]
    return [m["dense_latency_ms"][key] / m["latency_ms"][key] for m in results if key in m["latency_ms"]]


def latency_table(name: str, runs: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"{name}: latency speed-up over the dense model (median of {args.repeats} passes, "
        f"{args.threads} CPU thread(s)), mean ± std over seeds; ratio = speed-up / MAC reduction "
        f"(goal ≥ {GOAL_RATIO} at batch 256 on the GPU)"
    )
    for column in (
        "target",
        "method",
        "MAC reduction",
        "CPU b1",
        "CPU b256",
        "CPU b256 ratio",
        "GPU b256",
        "GPU b256 ratio",
    ):
        table.add_column(column, justify="right")
    dense = runs[0]["dense"]["latency_ms"]
    table.add_row(
        "",
        "dense (ms, seed 0)",
        "1.00×",
        f"{dense['cpu@1']:.1f} ms",
        f"{dense['cpu@256']:.0f} ms",
        "",
        f"{dense['cuda@256']:.1f} ms" if "cuda@256" in dense else "no GPU",
        "",
    )
    for reduction in REDUCTIONS:
        for method in METHODS:
            reached = [r["dense"]["macs"] / r["targets"][str(reduction)]["methods"][method]["macs"] for r in runs]
            cells = []
            for device in ("cpu", "cuda"):
                speedups = _speedups(runs, reduction, method, f"{device}@256")
                ratios = [s / m for s, m in zip(speedups, reached, strict=False)]
                cells += [_mean_std(speedups, 1.0, unit="×"), _mean_std(ratios, 1.0)] if speedups else ["no GPU"] * 2
            table.add_row(
                f"{reduction}×" if method == METHODS[0] else "",
                method,
                _mean_std(reached, scale=1.0, unit="×"),
                _mean_std(_speedups(runs, reduction, method, "cpu@1"), 1.0, unit="×"),
                *cells,
            )
    return table


# --------------------------------------------------------------------------- main


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a stored result depends on: a rerun reuses results only under the same settings."""
    keys = (
        "limit_train",
        "val_fraction",
        "epochs",
        "lr",
        "batch_size",
        "finetune_epochs",
        "finetune_lr",
        "levels",
        "subset",
        "threads",
        "repeats",
        "test_subset",
    )
    return {"device": str(args.device), **{key: getattr(args, key) for key in keys}}


def load_record(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The results stored in ``path`` under the same settings, or a fresh record."""
    fresh = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "prunescope_version": prunescope.__version__,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "settings": settings(args),
        "runs": {},
    }
    if not path.exists():
        return fresh
    record = json.loads(path.read_text())
    if record["settings"] != fresh["settings"]:
        raise UsageError(f"{path} holds results with other settings ({record['settings']}): use another --work")
    return record


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … n-1 of the dense models")
    parser.add_argument("--limit-train", type=int, default=2000, help="stratified subset of the train split")
    parser.add_argument("--val-fraction", type=float, default=1 / 60, help="share of the train split carved off as val")
    parser.add_argument("--epochs", type=int, default=4, help="dense training epochs")
    parser.add_argument("--lr", type=float, default=0.05, help="dense peak learning rate (SGD, cosine)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="training and fine-tuning batch (small: more steps per epoch on CPU)"
    )
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs of every pruned model")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument(
        "--levels",
        default="0.25,0.5,0.75",
        type=lambda s: [float(v) for v in s.split(",")],
        help="channel fractions the scan measures per group",
    )
    parser.add_argument("--subset", type=int, default=300, help="val examples per scan evaluation")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("bench-work/structured"),
        help="dense checkpoints, scans and structured.json; a rerun resumes",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV),
        help=f"folder with fashion-mnist/ (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument("--device", default="auto", help="training and evaluation device (auto: CUDA when present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared 2-core box)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per latency (median)")
    parser.add_argument(
        "--test-subset",
        type=int,
        default=2000,
        help="test on a seeded sample of this many test examples (0: all 10,000)",
    )
    parser.add_argument("--report-only", action="store_true", help="print the tables of WORK/structured.json")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in args.models if m not in MODELS]:
        parser.error(f"unknown model {unknown[0]!r}: use {', '.join(MODELS)}")
    if args.data_dir is None and not args.report_only:
        parser.error(f"pass --data-dir or set {DATA_DIR_ENV} (folder with fashion-mnist/)")
    args.device = resolve_device(args.device)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "structured.json"
    if args.report_only:
        if not out.exists():
            raise UsageError(f"{out} does not exist: run the benchmark first")
        record = json.loads(out.read_text())
        vars(args).update(record["settings"])  # the tables describe the stored run, not this call's options
        report(record, args, out)
        return
    record = load_record(out, args)
    data = padded(
        load_dataset(
            "fashion-mnist", data_dir=args.data_dir, limit_train=args.limit_train, val_fraction=args.val_fraction
        )
    )
    start = time.perf_counter()
    # Seeds outer: a run stopped early still has every model at its first seeds.
    for seed in range(args.seeds):
        for name in args.models:
            key = f"{name}/seed{seed}"
            if key in record["runs"]:
                console.log(f"{key}: finished before, read back")
                continue
            record["runs"][key] = run_seed(name, data, seed, args)
            out.write_text(json.dumps(record, indent=1))
            seconds = record["runs"][key]["seconds"]
            console.log(
                f"{key}: {seconds['total']:.0f} s (train {seconds['train']:.0f}, scan {seconds['scan']:.0f}, "
                f"prune + fine-tune + test + latency {seconds['prune_finetune_test']:.0f})"
            )
    report(record, args, out, wall=time.perf_counter() - start)


def report(record: dict[str, Any], args: argparse.Namespace, out: Path, wall: float | None = None) -> None:
    """Print the tables of every model with at least one finished seed."""
    took = "" if wall is None else f"; wall time of this call {wall / 60:.1f} min"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    console.print(
        f"\nprunescope {prunescope.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU(s), "
        f"{args.threads} thread(s), device {args.device}{took}; GPU: {gpu}"
    )
    for name in args.models:
        runs = [run for seed in range(args.seeds) if (run := record["runs"].get(f"{name}/seed{seed}"))]
        if runs:
            console.print(accuracy_table(name, runs, args))
            console.print(latency_table(name, runs, args))
    console.print(f"per-seed numbers: {out}")


if __name__ == "__main__":
    main()
