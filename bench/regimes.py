"""Three-regime benchmark: does the regime rule's advice pick the better option, and how often?

One phase diagram (temperature × density) of the small CNN on Fashion-MNIST, run with
``prunescope.regimes.study`` (one-mask pairing, global magnitude, ``--seeds`` recovery seeds
per cell), then two case studies read off the measured cells, on the val split only:

1. **Direction**: at every cell whose advice points to a neighbouring temperature (regime I:
   raise, II-A: lower), is the neighbour's mean pruned error lower (right), higher (wrong),
   or within the larger seed spread of the two (tie)? And from every start temperature,
   does following the rule stop at a temperature whose error is within the seed spread of
   the measured best at that density?
2. **Selection**: at each density, the dense models of the grid (one per temperature) are a
   family; the rule (:func:`prunescope.regimes.select.choose`: connected first, then highest
   output CKA, else the smallest barrier) picks one from mc and CKA only. Its pruned error is
   compared with the family's best and median.

The default is sized for a 2-core CPU shared with other jobs (1 torch thread): 1,000
stratified train examples, val 1% of the train split (600 examples), epochs 1, 2, 4, 8 as the
temperature, densities 0.02, 0.05, 0.1, 0.3, 2 recovery epochs at lr 0.1, 4 BatchNorm
batches per point of the line. ResNet-20 does not fit this budget without a GPU (there was
none), so it is not run by default (``--model resnet20``).

    python bench/regimes.py --data-dir ../shared/data                 # the 4 × 4 diagram (45 min, loaded 2-core CPU)
    python bench/regimes.py --values 1,4 --densities 0.05,0.3          # a smaller one

Raw results (every cell, every seed, every pair's path) go to ``bench/results/regimes.json``
with the command, date and machine; the work folder (``--work``) resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import prunescope
from prunescope.regimes.classify import ADVICE, walk
from prunescope.regimes.select import choose
from prunescope.regimes.study import RegimeSettings, study


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def direction_case(summary: dict[str, Any]) -> dict[str, Any]:
    """Step checks (right / wrong / tie) and, from every start, whether the walk ends within spread of the best."""
    temps = summary["temperatures"]
    steps = [c for a in summary["advice"] for c in a["checks"]]
    walks = []
    for density in summary["densities"]:
        column = [c for c in summary["cells"] if c["density"] == density]
        regimes = [c["regime"] for c in column]
        errors = [c["error"] for c in column]
        spreads = [c["error_std"] or 0.0 for c in column]
        best = min(range(len(column)), key=errors.__getitem__)
        for start in range(len(temps)):
            chosen = walk(regimes, start).chosen
            walks.append({"density": density, "start": temps[start], "advice": ADVICE[regimes[start]],
                          "chosen": temps[chosen], "best": temps[best], "regret": errors[chosen] - errors[best],
                          "within_spread": errors[chosen] - errors[best] <= max(spreads[chosen], spreads[best]),
                          "start_within_spread": errors[start] - errors[best] <= max(spreads[start], spreads[best])})
    return {"steps": steps, "walks": walks,
            "right": sum(s["outcome"] == "right" for s in steps), "wrong": sum(s["outcome"] == "wrong" for s in steps),
            "tie": sum(s["outcome"] == "tie" for s in steps),
            "walks_within_spread": sum(w["within_spread"] for w in walks),
            "starts_within_spread": sum(w["start_within_spread"] for w in walks), "walks_total": len(walks)}


def selection_case(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per density: the rule's pick among the temperatures' models, against the family's best and median."""
    rows = []
    for density in summary["densities"]:
        column = [c for c in summary["cells"] if c["density"] == density]
        chosen = choose(column, summary["epsilon"], summary["delta"])
        errors = [c["error"] for c in column]
        best = min(range(len(column)), key=errors.__getitem__)
        rows.append({"density": density, "chosen": column[chosen]["temperature"], "chosen_error": errors[chosen],
                     "chosen_error_std": column[chosen]["error_std"], "best": column[best]["temperature"],
                     "best_error": errors[best], "best_error_std": column[best]["error_std"],
                     "median_error": statistics.median(errors), "rank": 1 + sum(e < errors[chosen] for e in errors),
                     "within_spread": errors[chosen] - errors[best]
                     <= max(column[chosen]["error_std"] or 0.0, column[best]["error_std"] or 0.0)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRUNESCOPE_DATA_DIR"))
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit-train", type=int, default=1000)
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--temperature", default="epochs")
    parser.add_argument("--values", default="1,2,4,8")
    parser.add_argument("--densities", default="0.02,0.05,0.1,0.3")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=0.1)
    parser.add_argument("--bn-batches", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--work", type=Path, default=Path("bench-work/regimes"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "regimes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = RegimeSettings(
        model=args.model, data=args.data, data_dir=args.data_dir, limit_train=args.limit_train,
        val_fraction=args.val_fraction, temperature=args.temperature, values=_floats(args.values),
        densities=_floats(args.densities), seeds=args.seeds, finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr, bn_batches=args.bn_batches,
    )
    started = time.perf_counter()
    summary = study(settings, args.work, workers=args.workers,
                    on_job=lambda key, done, total: print(f"{done}/{total} {key} "
                                                          f"({time.perf_counter() - started:.0f} s)", flush=True))
    seconds = time.perf_counter() - started
    direction, selection = direction_case(summary), selection_case(summary)
    record = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads, "gpu": torch.cuda.is_available(),
                    "note": "2-core CPU shared with other jobs; seconds are wall time under that load"},
        "prunescope_version": prunescope.__version__, "seconds": seconds, "settings": settings.identity(),
        "summary": summary, "direction": direction, "selection": selection,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1))

    print(f"\n{args.model} on {args.data}, {args.temperature} × density, {args.seeds} recovery seeds per cell, "
          f"val only; {seconds / 60:.1f} min on a shared CPU ({args.threads} thread(s), no GPU)")
    print(f"{'T':>6} {'d':>5} {'dense err':>9} {'pruned err':>16} {'mc':>8} {'CKA':>6} regime")
    for c in summary["cells"]:
        std = "" if c["error_std"] is None else f" ± {c['error_std']:.2%}"
        print(f"{c['temperature']:>6g} {c['density']:>5g} {c['dense_error']:>9.2%} {c['error']:>7.2%}{std:>9} "
              f"{c['mc']:>+8.3f} {c['cka_outputs']:>6.3f} {c['regime']}")
    print(f"\ndirection, step by step: right {direction['right']}, wrong {direction['wrong']}, tie (within the seed "
          f"spread) {direction['tie']} of {len(direction['steps'])} cells whose advice points to a neighbour")
    print(f"direction, walks: from {direction['walks_total']} (density, start) pairs the rule stops within the seed "
          f"spread of the best temperature {direction['walks_within_spread']} times (staying at the start: "
          f"{direction['starts_within_spread']} times)")
    for s in selection:
        print(f"selection at density {s['density']:g}: rule picks T={s['chosen']:g} ({s['chosen_error']:.2%}), "
              f"rank {s['rank']} of {len(summary['temperatures'])}; best T={s['best']:g} ({s['best_error']:.2%}), "
              f"median {s['median_error']:.2%}; within spread of the best: {s['within_spread']}")
    print(f"raw results: {args.results}")


if __name__ == "__main__":
    main()
