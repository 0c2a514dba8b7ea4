"""The hyperparameter study on LeNet-5 / Fashion-MNIST: do the dense hyperparameters hold once channels go?

Runs :func:`prunescope.hparams.study` (``prunescope hparams``) with a CPU-sized setting: a
stratified subset of the Fashion-MNIST train split (the output says how many), val 1/60 of
the train split (1,000 examples); the space is lr (log) × momentum × weight decay (log),
a fixed number of epochs; TPE dense search; a grid around the optimum over the two most
important knobs; several seeds per point; channel pruning by the budget pick on a channel
scan at the given MAC fractions; recovery by fine-tuning the pruned weights at every grid
point with that point's hyperparameters. It prints the table of distance, regret and rank
agreement per degree against their noise floors and the verdict, and writes the result
document (every landscape, per seed) to ``bench/results/hparams_study.json``. Trials train on
``--device`` (auto: CUDA when present), recorded in the output. Every trial is stored in the
study's journal under ``--work`` as it finishes: a killed run, rerun with the same command,
resumes without training a finished point again.

    PRUNESCOPE_DATA_DIR=../shared/data python bench/hparams_study.py
    python bench/hparams_study.py --limit-train 2000 --epochs 4 --grid 4x4 --seeds 3 --target-macs 1,0.5,0.25
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console

from prunescope.device import resolve_device
from prunescope.hparams import HparamsConfig, study
from prunescope.report.hparams import hparams_document, shift_table

RESULTS = Path(__file__).resolve().parent / "results" / "hparams_study.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--limit-train", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--grid", default="3x3")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--axes", default="", help="the grid's knobs, e.g. lr,momentum (default: the two most "
                        "important by fANOVA on the dense search)")
    parser.add_argument("--target-macs", default="1,0.7,0.5,0.35,0.25")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or mnist (IDX files in --data-dir)")
    parser.add_argument("--val-fraction", type=float, default=1 / 60)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--recover", default="finetune")
    parser.add_argument("--work", type=Path, default=Path("bench-work/hparams_study"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    space = {"lr": {"low": 0.003, "high": 0.3, "log": True}, "momentum": {"low": 0.0, "high": 0.95},
             "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}, "batch_size": 64, "epochs": args.epochs}
    device = str(resolve_device(args.device))
    config = HparamsConfig(model=args.model, data=args.data, data_dir=args.data_dir,
                           limit_train=args.limit_train, val_fraction=args.val_fraction, space=space, search="tpe",
                           budget=args.budget, grid=args.grid, axes=tuple(a for a in args.axes.split(",") if a),
                           seeds=args.seeds, granularity="channel",
                           levels=tuple(float(v) for v in args.target_macs.split(",")), recover=args.recover,
                           device=device)
    result = study(config, args.work, progress=lambda stage, done, total: print(f"{stage} {done}/{total}",
                                                                                 flush=True))
    seconds = time.perf_counter() - started
    console = Console(width=160)
    console.print(shift_table(result.to_dict()))
    console.print(f"• {result.verdict['sentence']}", highlight=False)
    console.print(f"• {result.verdict['answer']}", highlight=False)
    console.print(f"{seconds / 60:.1f} min on a 2-core CPU shared with other jobs, torch {torch.__version__}, "
                  f"1 thread; {args.model} on a {args.limit_train}-example stratified subset of the Fashion-MNIST "
                  "train split", highlight=False)
    doc = hparams_document(result)
    doc["bench"] = {"command": " ".join(sys.argv), "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()} {platform.node()}, 2 cores shared, 1 thread",
                    "torch": torch.__version__, "seconds": seconds, "device": device}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
