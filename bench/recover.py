"""Recovery after pruning: the classic LeNet results and ours vs LAMP vs uniform at equal fine-tuning.

Every case runs the whole pipeline (``prunescope.pipeline.job.run``: dense training → scan →
verified pick → one-shot comparison → fine-tuning of every method with the same budget →
scratch-E/B → test once), one output folder per (model, seed) under ``--work``, called once
per sparsity so that the dense model, the scan and the one-shot comparison are shared.
Every stage is cached there, so a rerun resumes where an interrupted one stopped and a
finished run is read back from its ``result@<sparsity>.json``.

1. LeNet-300-100 on MNIST against Han et al. (2015): 1.64% → 1.59% test error with 8% of the
   weights kept (fc1 / fc2 / fc3: 8 / 9 / 26%), iterative prune + retrain on a much longer
   schedule. At 92% removed, each fine-tuned with the same budget: ours, LAMP, global
   magnitude, Han's own per-layer allocation, and AGP (global, cubic, the same total
   epochs). Then the pipeline's recovered answer: how far ours goes within 0.5 points of the
   dense val accuracy after that fine-tuning (sweep 50-98%, bisected on val), its test
   error read once there, and AGP at the same sparsity. Committed output:
   ``bench/results/recover_lenet300.{json,txt}`` (8 + 3 epochs) and
   ``recover_lenet300_long.{json,txt}`` (20 + 10).
2. LeNet-5 on MNIST and the small CNN on Fashion-MNIST at 90% and 95%: test accuracy of the
   dense model, of ``ours``, LAMP and uniform (one-shot magnitude pruning at the method's
   allocation, then fine-tuned for the same epochs), and of scratch-E / scratch-B (Liu et
   al., ICLR 2019: the mask of ``ours`` trained from a fresh initialisation for the dense
   epochs / the dense compute). Scratch-B is capped at ``--scratch-cap`` × the dense epochs;
   when the cap applies it is a weaker baseline than Liu et al.'s (same compute), and the
   output says so.

Mean ± sample std over the seeds; the per-seed numbers go to ``<work>/recover.json``.

The defaults are short CPU schedules: LeNet-300-100 8 dense + 3 fine-tuning epochs (3 seeds:
10 minutes on one core, 2026-12-01), LeNet-5
2 + 1, the CNN 3 + 1 on a stratified 8,000-example subset of the Fashion-MNIST train split;
val is 1/30 of the train split (2,000 examples) and the scan starts on 500 of them. On a
2-core CPU shared with two other jobs (2026-11-23, torch 2.13.0, 1 thread) the 3 seeds took
65 minutes: LeNet-300-100 2.5, LeNet-5 21, CNN 41 (mostly evaluations: the scan, the
one-shot comparison and the test stage, not training). Dense test accuracy: 98.6%
(LeNet-300-100), 98.9% (LeNet-5), 79% (CNN: undertrained at this budget; give it more
data and epochs, e.g. ``--cnn-limit-train 0 --cnn-epochs 10``, on a faster machine).

    python bench/recover.py --data-dir ../shared/data              # 3 seeds (default data dir: $PRUNESCOPE_DATA_DIR)
    python bench/recover.py --seeds 1 --cases lenet300             # one case, one seed
    python bench/recover.py --cases lenet300 --lenet300-epochs 20 --lenet300-finetune 10  # closer to Han's
    python bench/recover.py --lenet5-epochs 10 --cnn-limit-train 0 --cnn-epochs 10  # longer
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import prunescope
from prunescope import measure
from prunescope.checkpoint import load_checkpoint
from prunescope.criteria import compute_scores
from prunescope.data import load_dataset
from prunescope.data.registry import DATA_DIR_ENV
from prunescope.device import resolve_device
from prunescope.evaluate import Evaluator
from prunescope.masks import compute_masks
from prunescope.models import model_spec
from prunescope.pipeline import job as pipeline
from prunescope.pipeline.config import RunConfig
from prunescope.pipeline.recovered import gradual_at
from prunescope.targets import find_targets
from prunescope.train import finetune
from prunescope.trust import Trust

HAN_DENSE_ERROR, HAN_PRUNED_ERROR = 0.0164, 0.0159  # Han et al. 2015, LeNet-300-100, 8% kept
HAN_KEPT = (0.08, 0.09, 0.26)  # Han et al. 2015, Table 2: share of fc1 / fc2 / fc3 weights kept
console = Console(width=None if sys.stdout.isatty() else 150)  # logs under nohup stay readable


@dataclass(frozen=True)
class Case:
    key: str
    model: str
    data: str
    title: str
    sparsities: tuple[float, ...]
    methods: tuple[str, ...]
    scratch: tuple[str, ...]
    epochs: int
    finetune_epochs: int
    limit_train: int | None
    recovered: bool = False  # the pipeline's recovered sweep, and the Han et al. comparison at 92%


def _cases(args: argparse.Namespace) -> list[Case]:
    cases = [
        Case(
            "lenet300",
            "lenet300",
            "mnist",
            "LeNet-300-100 on MNIST",
            (0.92,),
            ("ours", "lamp", "global"),
            (),
            args.lenet300_epochs,
            args.lenet300_finetune,
            None,
            recovered=True,
        ),
        Case(
            "lenet5",
            "lenet5",
            "mnist",
            "LeNet-5 on MNIST",
            (0.9, 0.95),
            ("ours", "lamp", "uniform"),
            ("E", "B"),
            args.lenet5_epochs,
            args.lenet5_finetune,
            None,
        ),
        Case(
            "cnn",
            "cnn",
            "fashion-mnist",
            "CNN on Fashion-MNIST",
            (0.9, 0.95),
            ("ours", "lamp", "uniform"),
            ("E", "B"),
            args.cnn_epochs,
            args.cnn_finetune,
            args.cnn_limit_train or None,
        ),
    ]
    return [c for c in cases if c.key in args.cases]


@contextmanager
def _pipeline_options(limit_train: int | None, val_fraction: float):
    """Options ``pipeline.run`` takes no setting for, handed to it for one case.

    - RunConfig has no dataset options: the pipeline's dataset loader gets ``val_fraction``
      (the share of the original train split carved off as val; the scan, the pick, the
      one-shot comparison and the per-epoch val all evaluate on it) and ``limit_train`` (a
      stratified, seeded subset of the train split; val and test unchanged). Both are
      recorded in the dataset spec of every checkpoint and of the result.
    - Latency is measured at batch size 1 only (``measure.LATENCY_BATCHES``): the batch-256
      latency is not reported here and costs as much as a test evaluation per model.
    """
    options: dict[str, Any] = {"val_fraction": val_fraction}
    if limit_train is not None:
        options["limit_train"] = limit_train
    saved = pipeline.load_dataset, measure.LATENCY_BATCHES
    pipeline.load_dataset, measure.LATENCY_BATCHES = partial(load_dataset, **options), (1,)
    try:
        yield
    finally:
        pipeline.load_dataset, measure.LATENCY_BATCHES = saved


class Progress:
    """One log line per stage (and per finished training run), with the time since the start."""

    def __init__(self, start: float, label: str) -> None:
        self.start, self.label, self.stage = start, label, None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self.stage:
            self.stage = stage
            console.log(f"[{_clock(time.perf_counter() - self.start)}] {self.label}: {stage}")
        if total is not None and done == total and total > 1 and not stage.startswith("scan"):
            console.log(f"[{_clock(time.perf_counter() - self.start)}] {self.label}: {stage} {done}/{total} done")


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _summary(doc: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """The per-seed numbers of one run() result document."""
    dense = doc["dense"]
    epochs = doc["settings"]["epochs"]
    methods = []
    for m in doc["methods"]:
        entry = {
            "method": m["method"],
            "error": m["error"],
            "allocation": m["allocation"],
            "one_shot_val_accuracy": m["one_shot"]["val"]["accuracy"],
        }
        if m["error"] is None:
            entry |= {
                "val_accuracy": m["val"]["accuracy"],
                "test_accuracy": m["test"]["accuracy"],
                "finetune_epochs": len(m["finetune"]["history"]),
                "params_nonzero": m["measure"]["params_nonzero"],
                "macs_effective": m["measure"]["macs_effective"],
            }
        methods.append(entry)
    ours = next((m for m in doc["methods"] if m["method"] == "ours" and m["error"] is None), None)
    scratch = []
    for s in doc["scratch"]:
        entry = {
            "mode": s["mode"],
            "epochs": s["epochs"],
            "val_accuracy": s["val"]["accuracy"],
            "test_accuracy": s["test"]["accuracy"],
        }
        if s["mode"] == "B" and ours is not None:
            # Liu et al.: same compute as the dense model; the pipeline counts MACs the same way.
            ratio = dense["measure"]["macs_dense"] / ours["measure"]["macs_effective"]
            entry |= {"epochs_same_compute": max(round(epochs * ratio), 1), "macs_ratio": ratio}
            entry["capped"] = entry["epochs_same_compute"] > s["epochs"]
        scratch.append(entry)
    return {
        "sparsity": doc["sparsity"],
        "seconds": seconds,
        "dataset": doc["dataset"],
        "dense": {
            "epochs": epochs,
            "val_accuracy": dense["val"]["accuracy"],
            "test_accuracy": dense["test"]["accuracy"],
            "params": dense["measure"]["params_total"],
        },
        "pick": {"global_sparsity": doc["pick"]["global_sparsity"]},
        "methods": methods,
        "scratch": scratch,
        "recovered": _recovered_summary(doc["recovered"]),
    }


def _recovered_summary(recovered: dict[str, Any] | None) -> dict[str, Any] | None:
    """The recovered answer of ``ours`` (val-selected), its test accuracy, and AGP at the same sparsity."""
    if recovered is None:
        return None
    gradual = recovered["gradual"]
    return {
        "answer": recovered["answer"],
        "finetune_epochs": recovered["epochs"],
        "baseline": recovered["baseline"],
        "dense_val_accuracy": recovered["dense_val"],
        "curves": recovered["curves"],
        "test_accuracy": recovered["test"]["accuracy"] if recovered["test"] else None,
        "gradual": None if gradual is None else _gradual_summary(gradual),
    }


def _gradual_summary(gradual: dict[str, Any]) -> dict[str, Any]:
    """AGP's numbers, or why it could not run (global magnitude emptied a layer at some step)."""
    summary = {key: gradual.get(key) for key in ("sparsity", "epochs", "steps", "error")}
    if not gradual.get("error"):
        summary |= {"val_accuracy": gradual["val"]["accuracy"], "test_accuracy": gradual["test"]["accuracy"]}
    return summary


def han_comparison(config: RunConfig, out: Path, val_fraction: float) -> dict[str, Any]:
    """Han et al.'s per-layer allocation, and AGP, at the run's sparsity, with the run's fine-tuning budget.

    The pipeline's dense model, split and magnitude criterion; Han's allocation (``HAN_KEPT``)
    is fine-tuned exactly as the pipeline fine-tunes every method, AGP (global allocation,
    cubic schedule) spends the same total epochs. Each model's val and test are read once.
    """
    data = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, val_fraction=val_fraction)
    spec = model_spec(config.model, data.input_shape, data.num_classes)
    model = load_checkpoint(out / "model.pt", trust_factory=Trust.of_specs(spec, data.spec)).model.eval()
    targets = find_targets(model)
    allocation = {t.name: 1 - kept for t, kept in zip(targets, HAN_KEPT, strict=True)}
    tune = pipeline.train_config(config, epochs=config.finetune_epochs, lr=config.finetune_lr)
    masks = compute_masks(compute_scores(model, targets, config.criterion), allocation)
    han = finetune(
        copy.deepcopy(model),
        data,
        targets,
        masks,
        tune,
        checkpoint=out / "han" / "model.pt",
        model_spec=spec,
        device=config.device,
    ).model
    removed = sum(int((~m.bool()).sum()) for m in masks.values())
    gradual = gradual_at(
        model, data, config.sparsity, tune, out / "han" / "gradual", spec, config.criterion, config.device
    )
    return {
        "han": {
            "allocation": allocation,
            "sparsity": removed / sum(t.numel for t in targets),
            "finetune_epochs": tune.epochs,
            "val_accuracy": Evaluator(han, data.val, device=config.device).evaluate().accuracy,
            "test_accuracy": Evaluator(han, data.test, device=config.device).evaluate().accuracy,
        },
        "gradual": _gradual_summary(gradual),
    }


def _settings_json(config: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))


def run_case(case: Case, seed: int, args: argparse.Namespace, start: float) -> list[dict[str, Any]]:
    folder = f"{case.model}-{case.data}-val{args.val_fraction:.4g}"
    folder += f"-n{case.limit_train}" if case.limit_train else ""
    out = Path(args.work) / folder / f"seed{seed}"
    rows = []
    for sparsity in case.sparsities:
        config = RunConfig(
            model=case.model,
            data=case.data,
            data_dir=args.data_dir,
            device=args.device,
            seed=seed,
            epochs=case.epochs,
            folds=0,
            strategy="adaptive",
            methods=case.methods,
            subset=args.subset or None,
            # One level per call: the one-shot stage is keyed on the scan's bookkeeping
            # (reused evaluations), so it is recomputed on every call anyway.
            sparsity=sparsity,
            sparsities=(sparsity,),
            finetune_epochs=case.finetune_epochs,
            finetune_lr=args.finetune_lr,
            recovered=case.recovered,
            scratch=case.scratch,
            scratch_max_factor=args.scratch_cap if case.scratch else None,
        )
        saved = out / f"result@{sparsity:g}.json"
        label = f"{case.key} seed {seed} @{sparsity:.0%}"
        if saved.is_file():
            cached = json.loads(saved.read_text())
            dataset = cached["dataset"]
            if (
                cached["settings"] == _settings_json(config)
                and dataset.get("limit_train") == case.limit_train
                and math.isclose(dataset["val_fraction"], args.val_fraction)
            ):
                console.log(f"[{_clock(time.perf_counter() - start)}] {label}: finished before, read back")
                rows.append(cached["summary"])
                continue
        began = time.perf_counter()
        with _pipeline_options(case.limit_train, args.val_fraction):
            doc = pipeline.run(config, out, progress=Progress(start, label))
        summary = _summary(doc, time.perf_counter() - began)
        if case.recovered:
            summary["at_han_sparsity"] = han_comparison(config, out, args.val_fraction)
            summary["seconds"] = time.perf_counter() - began
        saved.write_text(
            json.dumps({"settings": doc["settings"], "dataset": doc["dataset"], "summary": summary}, indent=1)
        )
        console.log(f"[{_clock(time.perf_counter() - start)}] {label}: done in {_clock(summary['seconds'])}")
        rows.append(summary)
    return rows


# --------------------------------------------------------------------------- tables


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    """Mean ± sample standard deviation, in percent by default; the mean alone for one value."""
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if len(values) == 1:
        return text
    return f"{text} ± {statistics.stdev(values) * scale:.{digits}f}"


def _method(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in row["methods"] if m["method"] == name), None)


def _kept(allocation: dict[str, float]) -> str:
    return " / ".join(f"{1 - s:.0%}" for s in allocation.values())


def lenet300_table(case: Case, rows: list[dict[str, Any]]) -> Table:
    seeds = len(rows)
    table = Table(
        title=f"{case.title}, {case.sparsities[0]:.0%} of weights removed (8% kept), "
        f"fine-tuned {case.finetune_epochs} epochs after {case.epochs} dense epochs; "
        f"test error %, mean ± std over {seeds} seed(s)"
    )
    for column in (
        "method",
        "dense test error",
        "pruned + fine-tuned",
        "change (pts)",
        "kept fc1 / fc2 / fc3",
        "one-shot val error",
    ):
        table.add_column(column, justify="right")
    dense = [1 - r["dense"]["test_accuracy"] for r in rows]
    for name in case.methods:
        entries = [m for r in rows if (m := _method(r, name)) is not None]
        ok = [m for m in entries if m["error"] is None]
        if not ok:
            table.add_row(name, _mean_std(dense), "n/a: " + (entries[0]["error"] if entries else "not run"), "", "", "")
            continue
        pruned = [1 - m["test_accuracy"] for m in ok]
        change = [p - d for p, d in zip(pruned, dense, strict=True)] if len(ok) == len(rows) else []
        table.add_row(
            name,
            _mean_std(dense),
            _mean_std(pruned),
            _mean_std(change, signed=True),
            _kept(ok[0]["allocation"]) + (" (seed 0)" if seeds > 1 else ""),
            _mean_std([1 - m["one_shot_val_accuracy"] for m in ok]),
        )
    extras = [r["at_han_sparsity"] for r in rows if r.get("at_han_sparsity")]
    if len(extras) == len(rows):
        gradual = extras[0]["gradual"]
        for label, key, kept in (
            ("Han's allocation + FT", "han", "8% / 9% / 26%"),
            (f"AGP, {gradual['epochs']} epochs", "gradual", f"global, {gradual['steps']} steps"),
        ):
            if any(e[key].get("error") for e in extras):
                errors = "; ".join(sorted({e[key]["error"] for e in extras if e[key].get("error")}))
                table.add_row(label, _mean_std(dense), f"n/a: {errors}", "", kept, "")
                continue
            pruned = [1 - e[key]["test_accuracy"] for e in extras]
            change = [p - d for p, d in zip(pruned, dense, strict=True)]
            table.add_row(label, _mean_std(dense), _mean_std(pruned), _mean_std(change, signed=True), kept, "")
    table.add_row(
        "Han et al. 2015",
        f"{HAN_DENSE_ERROR:.2%}".rstrip("%"),
        f"{HAN_PRUNED_ERROR:.2%}".rstrip("%"),
        f"{(HAN_PRUNED_ERROR - HAN_DENSE_ERROR) * 100:+.2f}",
        "8% / 9% / 26%",
        "iterative prune + retrain",
    )
    return table


def recovered_table(case: Case, rows: list[dict[str, Any]]) -> Table:
    """Per seed: how far ours goes within 0.5 points on val after fine-tuning, test read once there."""
    table = Table(
        title=f"{case.title}: how far after {case.finetune_epochs} fine-tuning epochs (recovered sweep, bisected "
        f"on val within 0.5 pts of dense val; test read once at the answer)"
    )
    for column in (
        "seed",
        "answer: sparsity (kept)",
        "dense test error",
        "ours + FT test error",
        "AGP (global) at the answer",
        "epochs (dense + FT)",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        rec = row["recovered"]
        if not rec["answer"]:
            table.add_row(str(row["seed"]), "none within the bound", "", "", "", "")
            continue
        table.add_row(
            str(row["seed"]),
            f"{rec['answer']:.1%} ({1 - rec['answer']:.1%})",
            f"{1 - row['dense']['test_accuracy']:.2%}",
            f"{1 - rec['test_accuracy']:.2%}",
            _gradual_error(rec["gradual"]),
            f"{row['dense']['epochs']} + {rec['finetune_epochs']}",
        )
    answers = [r["recovered"]["answer"] for r in rows]
    table.add_row(
        "mean ± std",
        _mean_std(answers, digits=1),
        _mean_std([1 - r["dense"]["test_accuracy"] for r in rows]),
        _mean_std([1 - r["recovered"]["test_accuracy"] for r in rows if r["recovered"]["test_accuracy"] is not None]),
        _mean_std([1 - g["test_accuracy"] for r in rows if (g := r["recovered"]["gradual"]) and not g["error"]]),
        "",
    )
    return table


def _gradual_error(gradual: dict[str, Any] | None) -> str:
    if gradual is None:
        return ""
    return f"n/a: {gradual['error']}" if gradual["error"] else f"{1 - gradual['test_accuracy']:.2%}"


def model_table(case: Case, rows_by_sparsity: dict[float, list[dict[str, Any]]], cap: float) -> tuple[Table, list[str]]:
    seeds = len(next(iter(rows_by_sparsity.values())))
    limit = f", train limited to {case.limit_train:,} examples" if case.limit_train else ""
    table = Table(
        title=f"{case.title}{limit}: test accuracy %, mean ± std over {seeds} seed(s); "
        f"fine-tuning {case.finetune_epochs} epochs for every method"
    )
    for column in ("sparsity", "model", "epochs", "one-shot val acc (before FT)", "test acc"):
        table.add_column(column, justify="right")
    notes = []
    for sparsity, rows in rows_by_sparsity.items():
        table.add_row(
            f"{sparsity:.0%}", "dense", str(case.epochs), "", _mean_std([r["dense"]["test_accuracy"] for r in rows])
        )
        for name in case.methods:
            entries = [m for r in rows if (m := _method(r, name)) is not None]
            ok = [m for m in entries if m["error"] is None]
            if not ok:
                table.add_row(
                    "",
                    name,
                    "",
                    _mean_std([m["one_shot_val_accuracy"] for m in entries]),
                    "n/a: " + (entries[0]["error"] if entries else "not run"),
                )
                continue
            table.add_row(
                "",
                f"{name} + FT",
                f"+{case.finetune_epochs}",
                _mean_std([m["one_shot_val_accuracy"] for m in ok]),
                _mean_std([m["test_accuracy"] for m in ok]),
            )
        for mode in case.scratch:
            entries = [s for r in rows for s in r["scratch"] if s["mode"] == mode]
            if not entries:
                table.add_row("", f"scratch-{mode}", "", "", "n/a (ours could not reach the sparsity)")
                continue
            epochs = sorted({s["epochs"] for s in entries})
            label = f"scratch-{mode} (ours' mask"
            if mode == "B" and any(s.get("capped") for s in entries):
                label += ", capped"
                per_seed = ", ".join(
                    f"{s['epochs']} of {s['epochs_same_compute']} ({s['macs_ratio']:.1f}× fewer MACs)" for s in entries
                )
                notes.append(
                    f"{case.title} @{sparsity:.0%}: scratch-B capped at {cap:g} × {case.epochs} dense epochs; "
                    f"epochs run of those the dense model's compute buys (Liu et al.), per seed: {per_seed}; "
                    f"where capped this scratch-B is a weaker baseline than theirs"
                )
            table.add_row(
                "", label + ")", "/".join(map(str, epochs)), "", _mean_std([s["test_accuracy"] for s in entries])
            )
    return table, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV),
        help=f"folder with the mnist/ and fashion-mnist/ IDX files (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument("--work", default="bench-work/recover", help="one run folder per (model, seed); reruns resume")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … n-1")
    parser.add_argument(
        "--cases", default="lenet300,lenet5,cnn", type=lambda s: [c.strip() for c in s.split(",") if c.strip()]
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: faster than 2 on a shared 2-core machine)",
    )
    parser.add_argument("--lenet300-epochs", type=int, default=8)
    parser.add_argument("--lenet300-finetune", type=int, default=3)
    parser.add_argument("--lenet5-epochs", type=int, default=2)
    parser.add_argument("--lenet5-finetune", type=int, default=1)
    parser.add_argument("--cnn-epochs", type=int, default=3)
    parser.add_argument("--cnn-finetune", type=int, default=1)
    parser.add_argument(
        "--cnn-limit-train",
        type=int,
        default=8000,
        help="stratified subset of the Fashion-MNIST train split (0: all 54,000)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=1 / 30,
        help="share of the train split carved off as val (default 1/30: 2,000 examples; library: 0.1)",
    )
    parser.add_argument(
        "--subset",
        type=int,
        default=500,
        help="scan on a seeded val subset of this size, grown x2 up to x4 where undecided (0: all)",
    )
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument(
        "--scratch-cap", type=float, default=2.0, help="scratch-B trains at most this many times the dense epochs"
    )
    args = parser.parse_args()
    unknown = set(args.cases) - {"lenet300", "lenet5", "cnn"}
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}: use lenet300, lenet5, cnn")
    if args.data_dir is None:
        parser.error(f"pass --data-dir or set {DATA_DIR_ENV} (folder with mnist/ and fashion-mnist/)")
    torch.set_num_threads(args.threads)
    # The measurement stage of the pipeline takes no "auto" (prunescope.measure._device): resolve it here.
    args.device = str(resolve_device(args.device))

    start = time.perf_counter()
    cases = _cases(args)
    results: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        for seed in range(args.seeds):
            for row in run_case(case, seed, args, start):
                results.setdefault(case.key, []).append({"seed": seed, **row})
    wall = time.perf_counter() - start

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "recover.json").write_text(
        json.dumps(
            {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "prunescope_version": prunescope.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                },
                "options": vars(args),
                "wall_seconds": wall,
                "cases": {
                    c.key: {
                        "model": c.model,
                        "data": c.data,
                        "epochs": c.epochs,
                        "finetune_epochs": c.finetune_epochs,
                        "limit_train": c.limit_train,
                        "sparsities": c.sparsities,
                        "methods": c.methods,
                        "scratch": c.scratch,
                        "runs": results.get(c.key, []),
                    }
                    for c in cases
                },
            },
            indent=1,
        )
    )

    console.print(
        f"\nprunescope {prunescope.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU(s), "
        f"{torch.get_num_threads()} thread(s), seeds 0…{args.seeds - 1}; "
        f"wall time of this call {_clock(wall)}; pipeline time of the runs when computed "
        f"{_clock(sum(r['seconds'] or 0 for rows in results.values() for r in rows))} "
        f"(a resumed run counts only its last call)"
    )
    notes = []
    for case in cases:
        rows = results.get(case.key, [])
        if case.key == "lenet300":
            console.print(lenet300_table(case, rows))
            if all(r.get("recovered") for r in rows):
                console.print(recovered_table(case, rows))
            continue
        by_sparsity = {s: [r for r in rows if math.isclose(r["sparsity"], s)] for s in case.sparsities}
        table, case_notes = model_table(case, by_sparsity, args.scratch_cap)
        console.print(table)
        notes += case_notes
    for note in notes:
        console.print(f"note: {note}")
    console.print(
        "one-shot val acc: magnitude pruning at the method's allocation, before fine-tuning. "
        "Scratch runs train ours' mask from a fresh initialisation (Liu et al., ICLR 2019). "
        f"Per-seed numbers: {work / 'recover.json'}"
    )


if __name__ == "__main__":
    main()
