"""Scan cost: ``adaptive`` (with and without a subset) vs sconce's full grid, and the picks each leads to.

For every model and seed: train it (cached in ``--work``, so reruns only scan), scan it with
each strategy into a fresh in-memory study, and print

1. cost: evaluations, full-split equivalents (examples evaluated / len(val)), wall time,
   and each as a ratio of the grid's;
2. picks: the ensemble pick verified jointly with :func:`prunescope.pick.choose.choose`
   (threshold + knee, backed off to the tolerance), and budget picks at 90 / 95 / 98%
   global sparsity, each with the largest per-target sparsity difference from the grid's
   pick and its joint val accuracy (and the difference from the grid's);
3. throughput: examples evaluated per second during the scan (setup included) vs plain
   inference (:class:`~prunescope.evaluate.Evaluator`) on the whole val split, measured
   right before and right after each scan (their mean), so that machine load hits both alike.
   With ``--scan-repeats R`` each scan runs R times (its curves are the same every time),
   raw inference measured before the first and after each; a repeat's ratio is its scan
   throughput over the mean of the raw throughputs on either side, and a run reports the
   medians (wall time, raw throughput, ratio): on a shared machine one scan of LeNet-300-100
   lasts a fraction of a second, and a burst of other work during it would decide its ratio.

With several seeds every number is a mean ± standard deviation over seeds (each seed
trains its own model; the data split is the same). Each scan's curves are written to
``WORK/MODEL-seedSEED/curves-VARIANT.json``.

    python bench/scan_cost.py --data-dir ../shared/data                  # LeNet-300-100 and LeNet-5, seed 0
    python bench/scan_cost.py --models lenet5 --seeds 0 1 2 --subsets none 500 auto
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.data.types import Dataset
from prunescope.errors import UsageError
from prunescope.evaluate import Evaluator
from prunescope.io import write_json
from prunescope.pick.choose import Choice, choose
from prunescope.pick.registry import make_allocator
from prunescope.pipeline.job import train_model
from prunescope.scan import scan
from prunescope.train import TrainConfig

BUDGETS = (0.90, 0.95, 0.98)
PICKS = ("ensemble", *(f"budget {b:.0%}" for b in BUDGETS))


@dataclass
class Run:
    """One scan of one model (one seed) and the picks made on its curves."""

    curves: Curves
    seconds: float  # median over the repeats
    val: int
    each: list[float] = field(default_factory=list)  # wall seconds of every repeat
    raw: float = 0.0  # plain inference on the whole val split, examples/s, measured around the scan (median)
    ratio: float = 0.0  # scan throughput / raw throughput around it (median over the repeats)
    choices: dict[str, Choice | str] = field(default_factory=dict)  # a str: why there is no pick

    @property
    def full_equivalents(self) -> float:
        return self.curves.examples / self.val


def _mean(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt.lstrip('+'))}"


def _label(subset: str) -> str:
    return "grid (sconce)" if subset == "grid" else "adaptive" if subset == "none" else f"adaptive, subset {subset}"


def _trained(model: str, data: Dataset, seed: int, epochs: int, work: Path, console: Console) -> torch.nn.Module:
    out = work / f"{model}-seed{seed}"
    cached = (out / "model.pt").exists()
    start = time.perf_counter()
    result = train_model(data, model, TrainConfig(epochs=epochs, seed=seed), out, device="cpu")
    what = "loaded" if cached else f"trained in {time.perf_counter() - start:.0f} s"
    console.print(f"{model} seed {seed}: {what}, val accuracy {result.final.val_accuracy:.2%}")
    return result.model.eval()


def _raw_throughput(model: torch.nn.Module, data: Dataset, repeats: int, subset: int | None = None) -> float:
    """Examples per second of plain inference on the val split (median of ``repeats`` runs after a warm-up)."""
    evaluator = Evaluator(model, data.val, device="cpu", subset=subset)
    evaluator.evaluate()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator.evaluate()
        rates.append(len(evaluator) / (time.perf_counter() - start))
    return statistics.median(rates)


def _scan(
    model: torch.nn.Module, data: Dataset, variant: str, tolerance: float, seed: int, repeats: int, raw_repeats: int,
    journal: Path | None = None,
) -> Run:
    if variant == "grid":
        kwargs: dict = {"strategy": "grid"}
    else:
        subset = None if variant == "none" else variant if variant == "auto" else int(variant)
        kwargs = {"strategy": "adaptive", "subset": subset}
    each, raws, ratios = [], [_raw_throughput(model, data, raw_repeats)], []
    for repeat in range(repeats):
        storage = None if journal is None else journal / f"{variant}-seed{seed}-{repeat}.journal"
        if storage is not None:
            storage.parent.mkdir(parents=True, exist_ok=True)
            storage.unlink(missing_ok=True)  # a fresh study: every point evaluated, none reused
        start = time.perf_counter()
        curves = scan(model, data, tolerance=tolerance, device="cpu", seed=seed, storage=storage, **kwargs)
        each.append(time.perf_counter() - start)
        raws.append(_raw_throughput(model, data, raw_repeats))
        ratios.append(curves.examples / each[-1] / ((raws[-2] + raws[-1]) / 2))
    return Run(curves, statistics.median(each), len(data.val), raw=statistics.median(raws),
               ratio=statistics.median(ratios), each=each)


def _pick(run: Run, model: torch.nn.Module, data: Dataset, tolerance: float) -> None:
    pickers = {"ensemble": make_allocator("ensemble", max_drop=tolerance)}
    pickers |= {f"budget {b:.0%}": make_allocator("budget", target_sparsity=b) for b in BUDGETS}
    for name, picker in pickers.items():
        try:
            run.choices[name] = choose(run.curves, picker, model, data, max_drop=tolerance, device="cpu")
        except UsageError as error:  # a budget above the scanned levels: "… allow (max 0.95); scan higher levels"
            reason = str(error).split(";")[0]
            run.choices[name] = f"n/a: {reason[reason.index('(') + 1:-1]} scanned" if "(max" in reason else reason


def _joint_accuracy(choice: Choice) -> float:
    return choice.verified.reference - choice.verified.measured_drop


def _cost_table(model: str, runs: dict[str, list[Run]]) -> Table:
    table = Table(title=f"{model}: scan cost (val {next(iter(runs.values()))[0].val} examples)")
    for column in ("strategy", "evaluations", "× grid", "full-split eq.", "× grid", "wall s", "× grid",
                   "scan examples/s", "raw inference examples/s", "scan ÷ raw"):
        table.add_column(column, justify="right")
    grid = runs["grid"]
    for variant, group in runs.items():
        evaluations = [r.curves.evaluations for r in group]
        equivalents = [r.full_equivalents for r in group]
        seconds = [r.seconds for r in group]
        rates = [r.curves.examples / r.seconds for r in group]
        table.add_row(
            _label(variant),
            _mean(evaluations, ".1f"),
            _mean([e / g.curves.evaluations for e, g in zip(evaluations, grid, strict=True)], ".1%"),
            _mean(equivalents, ".2f"),
            _mean([e / g.full_equivalents for e, g in zip(equivalents, grid, strict=True)], ".1%"),
            _mean(seconds, ".1f"),
            _mean([s / g.seconds for s, g in zip(seconds, grid, strict=True)], ".1%"),
            _mean(rates, ",.0f"),
            _mean([r.raw for r in group], ",.0f"),
            _mean([r.ratio for r in group], ".2f"),
        )
    return table


def _pick_table(model: str, runs: dict[str, list[Run]], tolerance: float) -> Table:
    table = Table(title=f"{model}: picks vs the grid's (ensemble verified to a {tolerance * 100:g}-point drop; "
                  "budget picks measured)")
    for column in ("pick", "strategy", "global sparsity", "max |Δ sparsity| vs grid", "joint val acc.",
                   "Δ acc. vs grid (pts)", "verify evals"):
        table.add_column(column, justify="right")
    grid = runs["grid"]
    for pick in PICKS:
        for variant, group in runs.items():
            sparsity, difference, accuracy, delta, steps, missing = [], [], [], [], [], []
            for run, reference in zip(group, grid, strict=True):
                choice, base = run.choices[pick], reference.choices[pick]
                if isinstance(choice, str):
                    missing.append(choice)
                    continue
                sparsity.append(choice.global_sparsity)
                accuracy.append(_joint_accuracy(choice))
                steps.append(len(choice.verified.steps))
                if not isinstance(base, str):
                    mine, theirs = choice.verified.allocation, base.verified.allocation
                    difference.append(max(abs(mine[t] - theirs[t]) for t in theirs))
                    delta.append(100 * (accuracy[-1] - _joint_accuracy(base)))
            if missing and not sparsity:
                table.add_row(pick, _label(variant), f"[dim]{missing[0]}[/dim]", "", "", "", "")
                continue
            table.add_row(
                pick, _label(variant), _mean(sparsity, ".2%"), _mean(difference, ".3f"), _mean(accuracy, ".2%"),
                _mean(delta, "+.2f") if variant != "grid" else "", _mean(steps, ".1f"),
            )
        table.add_section()
    return table


def _allocation_table(model: str, runs: dict[str, list[Run]]) -> Table:
    """The first seed's verified ensemble allocation per strategy, target by target."""
    first = {variant: group[0].choices["ensemble"] for variant, group in runs.items()}
    targets = list(next(iter(first.values())).verified.allocation)
    table = Table(title=f"{model}: verified ensemble allocation, seed of the first run")
    table.add_column("strategy")
    for target in targets:
        table.add_column(target, justify="right")
    for variant, choice in first.items():
        table.add_row(_label(variant), *(f"{choice.verified.allocation[t]:.4f}" for t in targets))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None, help="default: $PRUNESCOPE_DATA_DIR")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.5, help="allowed drop in accuracy points")
    parser.add_argument("--subsets", nargs="+", default=["none", "500", "auto"],
                        help="adaptive variants: none (whole split), a number of examples, or auto")
    parser.add_argument("--work", type=Path, default=Path("bench-work/scan_cost"), help="trained checkpoints")
    parser.add_argument("--repeats", type=int, default=10, help="runs of the raw inference throughput")
    parser.add_argument("--scan-repeats", type=int, default=1, help="runs of each scan (its wall time: the median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's raw numbers here")
    parser.add_argument("--storage", choices=("memory", "journal"), default="memory",
                        help="where each scan keeps its study: in memory, or a journal file under --work as "
                             "prunescope scan does")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tolerance = args.tolerance / 100
    console = Console(width=args.width)
    data = load_dataset(args.data, data_dir=args.data_dir, seed=0)
    console.print(f"{args.data}: train {len(data.train)}, val {len(data.val)}; torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, tolerance {args.tolerance:g} points, seeds {args.seeds}")
    raw: list[dict] = []
    for model_name in args.models:
        runs: dict[str, list[Run]] = defaultdict(list)
        for seed in args.seeds:
            model = _trained(model_name, data, seed, args.epochs, args.work, console)
            for variant in ("grid", *args.subsets):
                journal = args.work / "journals" if args.storage == "journal" else None
                run = _scan(model, data, variant, tolerance, seed, args.scan_repeats, args.repeats, journal)
                write_json(args.work / f"{model_name}-seed{seed}" / f"curves-{variant}.json", run.curves.to_dict())
                _pick(run, model, data, tolerance)
                runs[variant].append(run)
                raw.append({"model": model_name, "seed": seed, "variant": variant,
                            "evaluations": run.curves.evaluations, "examples": run.curves.examples,
                            "seconds": run.seconds, "seconds_each": run.each,
                            "scan_examples_per_s": run.curves.examples / run.seconds,
                            "raw_examples_per_s": run.raw,
                            "throughput_ratio": run.ratio})
                console.print(f"  {_label(variant)}: {run.curves.evaluations} evaluations, "
                              f"{run.full_equivalents:.2f} full-split eq., {run.seconds:.1f} s")
        console.print(_cost_table(model_name, runs))
        console.print(_pick_table(model_name, runs, tolerance))
        console.print(_allocation_table(model_name, runs))
    if args.json is not None:
        write_json(args.json, {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "data": args.data, "epochs": args.epochs,
                               "scan_repeats": args.scan_repeats, "storage": args.storage,
                               "tolerance_points": args.tolerance, "runs": raw})


if __name__ == "__main__":
    main()
