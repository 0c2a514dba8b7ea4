"""In-sample vs cross-validated pick: the drop each reports on val, and whether it holds on test.

For each model (LeNet-300-100 and LeNet-5 on MNIST) and each seed of the dense model: train
it briefly (cached in ``--work``), scan it (adaptive, first val subset ``3 / bound`` examples,
grown where a decision is within noise; the journal is cached), then pick twice with the
default picker (ensemble of threshold and knee, bound ``--max-drop``):

- **in-sample**: ``choose(..., folds=0)``, picked and verified on the whole of val, the
  per-layer threshold equal to the bound (what prunescope did before cross-validation);
- **cross-validated**: ``choose(..., folds=K)``, the per-layer threshold chosen on K val folds
  (:mod:`prunescope.pick.crossval`), then picked and verified on the whole of val.

Reported per pick: its global sparsity, its joint drop on val as verify measured it
(in-sample), for the cross-validated one the held-out drop over the folds (mean ± std), and the
joint drop on the test split against the dense model on the same examples with its paired
95% interval (read once per allocation, after selection). Then, over models × seeds, how often
each pick breaks the bound on test, and how often the in-sample pick breaks it while the
cross-validated one holds. Per-seed raw numbers go to ``--out`` (JSON, with command, date and
machine).

    python bench/crossval.py --data-dir ../shared/data --seeds 1 --models lenet300   # iterate
    python bench/crossval.py --data-dir ../shared/data --seeds 3 --out bench/results/crossval.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from prunescope.data import load_dataset
from prunescope.models import build_model, model_spec
from prunescope.pick.choose import choose
from prunescope.pick.registry import make_allocator
from prunescope.pick.verify import ExampleEvaluator
from prunescope.scan import scan
from prunescope.train import TrainConfig, train
from prunescope.units import find_units

MODELS = {"lenet300": ("mnist", 2), "lenet5": ("mnist", 1)}  # name: (dataset, dense epochs)
console = Console(width=150)


def dense_model(name: str, data, seed: int, work: Path) -> torch.nn.Module:
    """The dense model of ``seed``, trained once and cached (resumed) in ``work``."""
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    spec = model_spec(name, data.input_shape, data.num_classes)
    config = TrainConfig(epochs=MODELS[name][1], seed=seed)
    return train(model, data, config, checkpoint=work / f"{name}-seed{seed}.pt", model_spec=spec).model.eval()


def run_seed(name: str, seed: int, args: argparse.Namespace) -> dict:
    data = load_dataset(MODELS[name][0], data_dir=args.data_dir, seed=seed)
    start = time.perf_counter()
    model = dense_model(name, data, seed, args.work)
    trained = time.perf_counter()
    curves = scan(model, data, tolerance=args.max_drop, subset="auto", device="cpu", seed=seed,
                  storage=args.work / f"{name}-seed{seed}.journal")
    scanned = time.perf_counter()
    picker = make_allocator("ensemble", max_drop=args.max_drop)
    units = find_units(model, data, curves.granularity, curves.criterion, names=list(curves.curves))
    test = ExampleEvaluator(units, data.test, device="cpu")
    everything = np.arange(len(data.test))
    record = {"model": name, "seed": seed, "val_examples": len(data.val), "test_examples": len(data.test),
              "scan_evaluations": curves.evaluations, "scan_examples": curves.examples,
              "seconds": {"train": trained - start, "scan": scanned - trained}}
    for label, folds in (("in_sample", 0), ("crossval", args.folds)):
        began = time.perf_counter()
        choice = choose(curves, picker, model, data, max_drop=args.max_drop, device="cpu", folds=folds, seed=seed)
        record["seconds"][label] = time.perf_counter() - began
        drop, low, high = test.drop(choice.verified.allocation, everything)  # test read once, after selection
        entry = {"global_sparsity": choice.global_sparsity, "allocation": choice.verified.allocation,
                 "val_drop_in_sample": choice.verified.measured_drop, "test_drop": drop, "test_low": low,
                 "test_high": high, "breaks_bound_on_test": drop > args.max_drop}
        if choice.crossval is not None:
            cv = choice.crossval.to_dict()
            entry |= {"threshold": cv["threshold"], "held_out_mean": cv["held_out_mean"],
                      "held_out_std": cv["held_out_std"], "holds": cv["holds"],
                      "candidates": [{k: c[k] for k in ("threshold", "held_out_mean", "held_out_std")}
                                     for c in cv["candidates"]]}
        else:
            entry["threshold"] = args.max_drop
        record[label] = entry
    return record


def _pts(values: list[float]) -> str:
    mean = statistics.fmean(values) * 100
    return f"{mean:+.2f} ± {statistics.stdev(values) * 100:.2f}" if len(values) > 1 else f"{mean:+.2f}"


def print_tables(record: dict) -> None:
    runs = record["runs"]
    table = Table(title=f"default pick within {record['max_drop'] * 100:g} pts: in-sample vs cross-validated "
                        f"({record['folds']} val folds); mean ± std over seeds, pts")
    for column in ("model", "pick", "seeds", "sparsity", "per-layer thr.", "val drop (in-sample)",
                   "held-out drop (CV)", "test drop", "breaks bound on test"):
        table.add_column(column, justify="right" if column not in ("model", "pick") else "left")
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        for label in ("in_sample", "crossval"):
            entries = [r[label] for r in mine]
            held = [e["held_out_mean"] for e in entries if "held_out_mean" in e]
            table.add_row(
                name, label.replace("_", "-"), str(len(entries)),
                f"{statistics.fmean(e['global_sparsity'] for e in entries):.1%}",
                ", ".join(f"{e['threshold'] * 100:g}" for e in entries),
                _pts([e["val_drop_in_sample"] for e in entries]),
                _pts(held) if held else "-",
                _pts([e["test_drop"] for e in entries]),
                f"{sum(e['breaks_bound_on_test'] for e in entries)}/{len(entries)}",
            )
    console.print(table)
    rescued = sum(r["in_sample"]["breaks_bound_on_test"] and not r["crossval"]["breaks_bound_on_test"] for r in runs)
    lost = sum(r["crossval"]["breaks_bound_on_test"] and not r["in_sample"]["breaks_bound_on_test"] for r in runs)
    console.print(f"in-sample breaks the bound on test while cross-validated holds: {rescued}/{len(runs)}; "
                  f"the reverse: {lost}/{len(runs)} (CPU shared with other jobs; seconds are indicative only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with mnist/ (IDX files)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-crossval"), help="cache of models and scans")
    parser.add_argument("--out", type=Path, default=None, help="raw per-seed JSON (default: WORK/crossval.json)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds FIRST..FIRST+N-1 of the dense models")
    parser.add_argument("--first-seed", type=int, default=0, help="FIRST (to run seeds in parallel processes)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--max-drop", type=float, default=0.005, help="bound on the joint drop (fraction)")
    parser.add_argument("--folds", type=int, default=3, help="val folds of the cross-validated pick")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a shared 2-core box)")
    parser.add_argument("--report-only", action="store_true", help="print the tables of --out")
    args = parser.parse_args()
    out = args.out or args.work / "crossval.json"
    if args.report_only:
        print_tables(json.loads(out.read_text()))
        return
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__, "note": "2-core CPU shared with other jobs while this ran"},
        "max_drop": args.max_drop, "folds": args.folds, "runs": [],
    }
    for name in args.models.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_seed(name, seed, args)
            record["runs"].append(run)
            mine, cv = run["in_sample"], run["crossval"]
            console.print(f"{name} seed {seed}: in-sample {mine['global_sparsity']:.1%} test drop "
                          f"{mine['test_drop'] * 100:+.2f} pts; cross-validated {cv['global_sparsity']:.1%} test drop "
                          f"{cv['test_drop'] * 100:+.2f} pts; {run['seconds']}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=1))
    print_tables(record)


if __name__ == "__main__":
    main()
