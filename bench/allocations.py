"""One-shot accuracy of every allocation at 80 / 90 / 95 / 98% global sparsity, over seeds.

For each model (LeNet-300-100 and LeNet-5 on MNIST, the small ``cnn`` on Fashion-MNIST)
and each seed of the dense model: train it (cached in ``--work``), scan it (adaptive,
sconce's levels 0.10…0.95 plus 0.98, 0.99, 0.995, 0.999 as coarse levels, on val
subsets; cached), then :func:`prunescope.pipeline.compare.compare` at the sparsities for ``ours``,
uniform, uniform+, global, ERK and LAMP (magnitude criterion within layers, no
fine-tuning; selection on val, test once at the end). Also, not used for selection:

- ``budget`` (no refine): the budget pick alone, what ``ours`` was before start
  selection and refinement;
- the sconce line: ``ThresholdPicker.sconce()`` on the same scan, its global sparsity,
  and global magnitude at that same sparsity.

Prints, per model, val and test accuracy mean ± std over seeds per method and sparsity,
the best baseline (by mean) marked *, ``ours`` green where its mean is at least the best
baseline's; and the paired difference ours − best baseline. Per-seed raw numbers go to
``WORK/allocations.json``.

    python bench/allocations.py --data-dir ../shared/data --seeds 1           # iterate
    python bench/allocations.py --data-dir ../shared/data --seeds 3 --work runs/alloc
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
from rich.console import Console
from rich.table import Table

from prunescope.criteria import compute_scores
from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.evaluate import Evaluator
from prunescope.masks import applied, compute_masks, global_sparsity
from prunescope.models import build_model, model_spec
from prunescope.pick.baselines import allocate
from prunescope.pick.pickers import ThresholdPicker
from prunescope.pick.refine import PairwiseRefiner
from prunescope.pipeline.compare import METHODS, compare
from prunescope.scan import scan
from prunescope.scan.strategy import SCONCE_LEVELS
from prunescope.targets import find_targets
from prunescope.train import TrainConfig, train

MODELS = {  # name: (dataset, epochs)
    "lenet300": ("mnist", 10),
    "lenet5": ("mnist", 3),
    "cnn": ("fashion-mnist", 3),
}
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
HIGH_LEVELS = (0.98, 0.99, 0.995, 0.999)
BASELINES = [m for m in METHODS if m != "ours"]
console = Console(width=150)


def dense_model(name: str, data, seed: int, work: Path) -> tuple[torch.nn.Module, list[dict]]:
    """The dense model of ``seed``, trained once and cached (resumed) in ``work``."""
    epochs = MODELS[name][1]
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    spec = model_spec(name, data.input_shape, data.num_classes)
    result = train(
        model, data, TrainConfig(epochs=epochs, seed=seed), checkpoint=work / f"{name}-seed{seed}.pt", model_spec=spec
    )
    return result.model.eval(), [
        {"epoch": r.epoch, "val_accuracy": r.val_accuracy, "seconds": r.seconds} for r in result.history
    ]


def curves_of(name: str, model: torch.nn.Module, data, seed: int, work: Path, subset: int) -> tuple[Curves, float]:
    """The scan of ``model`` (cached as JSON in ``work``) and the seconds it took (0 when cached)."""
    path = work / f"{name}-seed{seed}-scan.json"
    if path.exists():
        return Curves.from_dict(json.loads(path.read_text())), 0.0
    start = time.perf_counter()
    levels = sorted({*SCONCE_LEVELS, *HIGH_LEVELS})
    curves = scan(model, data, strategy="adaptive", levels=levels, subset=subset, seed=seed)
    seconds = time.perf_counter() - start
    path.write_text(json.dumps(curves.to_dict()))
    return curves, seconds


def sconce_line(model: torch.nn.Module, data, curves: Curves, batch_size: int) -> dict:
    """sconce's pick on the scan, its global sparsity, and global magnitude at that sparsity (val, test)."""
    targets = find_targets(model)
    scores = compute_scores(model, targets, "magnitude")
    pick = ThresholdPicker.sconce().pick(curves).allocation
    sconce = {t.name: pick.get(t.name, 0.0) for t in targets}
    sparsity = global_sparsity(sconce, targets)
    matched = allocate("global", model, targets, sparsity) if sparsity > 0 else dict.fromkeys(sconce, 0.0)
    result = {"sparsity": sparsity, "allocation": sconce, "global_allocation": matched}
    for split in ("val", "test"):
        evaluator = Evaluator(model, getattr(data, split), batch_size=batch_size)
        for key, allocation in (("sconce", sconce), ("global", matched)):
            with applied(model, targets, compute_masks(scores, allocation)):
                result[f"{key}_{split}"] = evaluator.evaluate().accuracy
    return result


def run_seed(name: str, data, seed: int, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    model, history = dense_model(name, data, seed, args.work)
    trained = time.perf_counter()
    curves, scan_seconds = curves_of(name, model, data, seed, args.work, args.subset)
    refiner = PairwiseRefiner(max_evaluations=args.refine_evaluations)
    compared = time.perf_counter()
    comparison = compare(model, data, SPARSITIES, METHODS, curves=curves, refiner=refiner, batch_size=args.batch_size)
    compare_seconds = time.perf_counter() - compared
    plain = compare(
        model, data, SPARSITIES, ["ours"], curves=curves, refiner=None, starts=(), batch_size=args.batch_size
    )
    sconce = sconce_line(model, data, curves, args.batch_size)
    return {
        "model": name,
        "dataset": data.name,
        "seed": seed,
        "history": history,
        "scan": {
            "evaluations": curves.evaluations,
            "examples": curves.examples,
            "seconds": scan_seconds,
            "levels": {t: [p.sparsity for p in c.sorted_points()] for t, c in curves.curves.items()},
        },
        "comparison": comparison.to_dict(),
        "budget_only": [r.to_dict() for r in plain.rows],
        "sconce": sconce,
        "seconds": {"train": trained - start, "compare": compare_seconds, "total": time.perf_counter() - start},
    }


def _cell(values: list[float], best: bool = False, style: str = "") -> str:
    mean = statistics.fmean(values) * 100
    text = f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {statistics.stdev(values) * 100:.2f}"
    if best:
        text = f"{text} *"
    return f"[{style}]{text}[/{style}]" if style else text


def _accuracies(runs: list[dict], split: str) -> dict[tuple[str, float], list[float]]:
    """{(method, sparsity): per-seed accuracies}; methods without a result at a sparsity are left out."""
    table: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        rows = run["comparison"]["rows"] + [dict(r, method="budget (no refine)") for r in run["budget_only"]]
        for row in rows:
            if row[split] is not None:
                table.setdefault((row["method"], row["sparsity"]), []).append(row[split]["accuracy"])
    return table


def print_model(name: str, runs: list[dict]) -> dict:
    """Tables of one model; returns the goal check (ours vs best baseline per split and sparsity)."""
    dataset = runs[0]["dataset"]
    seeds = [r["seed"] for r in runs]
    dense = {split: [r["comparison"][f"dense_{split}"]["accuracy"] for r in runs] for split in ("val", "test")}
    goal: dict = {}
    for split in ("val", "test"):
        acc = _accuracies(runs, split)
        table = Table(
            title=f"{name} on {dataset}, one-shot {split} accuracy % (mean ± std over seeds {seeds}); "
            f"dense {_cell(dense[split])}; * best baseline"
        )
        table.add_column("method")
        for s in SPARSITIES:
            table.add_column(f"{s:.0%}", justify="right")
        best = {}
        for s in SPARSITIES:
            complete = [m for m in BASELINES if len(acc.get((m, s), [])) == len(runs)]
            best[s] = max(complete, key=lambda m, s=s: statistics.fmean(acc[m, s]))
        for method in ("ours", "budget (no refine)", *BASELINES):
            cells = []
            for s in SPARSITIES:
                values = acc.get((method, s))
                if not values:
                    cells.append("infeasible")
                    continue
                style = ""
                if method == "ours":
                    style = "green" if statistics.fmean(values) >= statistics.fmean(acc[best[s], s]) else "red"
                cells.append(_cell(values, best=method == best[s], style=style))
            table.add_row(method, *cells)
        deltas = []
        for s in SPARSITIES:
            diffs = [o - b for o, b in zip(acc["ours", s], acc[best[s], s], strict=True)]
            deltas.append(f"{_cell(diffs)} vs {best[s]}")
            goal[f"{split}@{s:g}"] = {
                "best_baseline": best[s],
                "ours_minus_best": diffs,
                "met": statistics.fmean(diffs) >= 0,
            }
        table.add_row("ours − best baseline (paired)", *deltas)
        console.print(table)
    sconce = Table(title=f"{name}: sconce auto-sensitivity pick vs global magnitude at the same sparsity (%)")
    for column in ("seed", "sconce sparsity", "sconce val", "global val", "sconce test", "global test"):
        sconce.add_column(column, justify="right")
    for run in runs:
        c = run["sconce"]
        sconce.add_row(
            str(run["seed"]),
            f"{c['sparsity']:.2%}",
            f"{c['sconce_val']:.2%}",
            f"{c['global_val']:.2%}",
            f"{c['sconce_test']:.2%}",
            f"{c['global_test']:.2%}",
        )
    console.print(sconce)
    return goal


def report(path: Path) -> None:
    """Print the tables of a finished (or partial) run from its JSON."""
    record = json.loads(path.read_text())
    console.print(f"{record['date']}, {record['machine']}, settings {record['settings']}")
    for name in dict.fromkeys(run["model"] for run in record["runs"]):
        print_model(name, [run for run in record["runs"] if run["model"] == name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with mnist/ and fashion-mnist/ (IDX files)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("prunescope-out/bench-allocations"),
        help="cache of dense models and scans, and where allocations.json goes",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the dense models")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--refine-evaluations", type=int, default=40, help="refinement budget of ours per sparsity")
    parser.add_argument("--subset", type=int, default=2000, help="first val subset size of the scans")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per forward pass when evaluating")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared 2-core box)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of WORK/allocations.json")
    args = parser.parse_args()
    if args.report_only:
        report(args.work / "allocations.json")
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}: use {', '.join(MODELS)}")

    out = args.work / "allocations.json"
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "settings": {
            "sparsities": SPARSITIES,
            "models": {m: MODELS[m] for m in models},
            "seeds": args.seeds,
            "refine_evaluations": args.refine_evaluations,
            "scan_subset": args.subset,
            "scan_levels": sorted({*SCONCE_LEVELS, *HIGH_LEVELS}),
            "criterion": "magnitude",
        },
        "runs": [],
        "goal": {},
    }
    for name in models:
        data = load_dataset(MODELS[name][0], data_dir=args.data_dir)
        runs = []
        for seed in range(args.seeds):
            run = run_seed(name, data, seed, args)
            console.print(
                f"{name} seed {seed}: dense val {run['comparison']['dense_val']['accuracy']:.2%}, "
                f"{run['seconds']['total']:.0f} s (train {run['seconds']['train']:.0f}, scan "
                f"{run['scan']['seconds']:.0f}, compare {run['seconds']['compare']:.0f})"
            )
            runs.append(run)
            record["runs"].append(run)
            out.write_text(json.dumps(record, indent=1))
        record["goal"][name] = print_model(name, runs)
        out.write_text(json.dumps(record, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
