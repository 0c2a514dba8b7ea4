"""Three-regime benchmark: the phase diagram of Zhou et al. (ICML 2023) and the rule's three case studies.

``--dense-seeds`` replicates of one temperature × density diagram (``prunescope.regimes.study``,
one-mask pairing: per replicate one dense model per temperature, pruned once by global
magnitude, recovered with ``--seeds`` seeds; ``--recovery-temperature``: the temperature also
sets the recovery, as the paper's code retrains at the dense model's settings), then
(``prunescope.regimes.cases``):

- the boundaries ε, δ chosen on **val** (most right minus wrong steps of the rule on val
  errors), the decisions and the scores read on **test**;
- the temperature effect per density (does raising T help at one load and hurt at another,
  beyond the spread across dense seeds);
- case 1, direction: each advised step right / wrong / tie, and the rule's walks against staying put;
- case 2, selection: the rule's pick of each replicate's family against a random member and
  against the best dense model;
- case 3 (``--sam-values``): SAM's ρ tuned by the rule against the grid, on a reduced
  diagram (one dense seed, its recovery seeds as the spread).

Raw results (every replicate's cells with every seed and path, the command, the device) go to
``--results`` after each replicate, so a stopped run leaves what it measured; the work
folders (``--work``) resume it. A phase-diagram PNG goes next to them.

    python bench/regimes.py --data-dir DIR                      # the default setting (see docs/benchmarks/regimes.md)
    python bench/regimes.py --data-dir DIR --limit-train 2000 --values 1,4 --densities 0.05,0.5 --dense-seeds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import prunescope
from prunescope.device import resolve_device
from prunescope.regimes import cases
from prunescope.regimes.classify import classify
from prunescope.regimes.study import RegimeSettings, study
from prunescope.report.plots import phase_plot


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",")) if text else ()


def _pm(value: float, spread: float) -> str:
    return f"{value:.2%} ± {spread:.2%}"


def settings_of(args: argparse.Namespace, **changes: Any) -> RegimeSettings:
    base = {"model": args.model, "data": args.data, "data_dir": args.data_dir, "limit_train": args.limit_train or None,
            "val_fraction": args.val_fraction, "temperature": args.temperature, "values": _floats(args.values),
            "densities": _floats(args.densities), "seeds": args.seeds, "epochs": args.epochs, "lr": args.lr,
            "batch_size": args.batch_size, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
            "recovery_temperature": args.recovery_temperature, "bn_batches": args.bn_batches,
            "device": args.device}
    return RegimeSettings(**(base | changes))


def analyse(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Boundaries on val, then the temperature effect and cases 1 and 2 on test."""
    cells = cases.combine(summaries)
    chosen = cases.calibrate(cells, metric="error")
    eps, delta = chosen["epsilon"], chosen["delta"]
    for cell in cells:
        cell["regime"] = classify(cell["mc"], cell["cka_outputs"], eps, delta)
    return {"boundaries": chosen, "cells": cells, "effect": cases.temperature_effect(cells),
            "transitions": cases.transitions(cells),
            "direction": cases.direction(cells, eps, delta),
            "direction_val": cases.direction(cells, eps, delta, "error"),
            "walks": cases.walks(cells, eps, delta), "selection": cases.selection(summaries, eps, delta)}


def plot(cells: list[dict[str, Any]], temperatures: list[float], densities: list[float], temperature: str,
         path: Path) -> Path:
    grid = {(c["temperature"], c["density"]): c for c in cells}

    def panel(name: str) -> list[list[float | None]]:
        return [[grid[(t, d)][name] for d in densities] for t in temperatures]

    regimes = [[grid[(t, d)]["regime"] for d in densities] for t in temperatures]
    return phase_plot(temperatures, densities, {"pruned test error": panel("test_error"), "mc (nats)": panel("mc"),
                                                "output CKA": panel("cka_outputs")}, regimes, temperature, path)


def print_tables(record: dict[str, Any]) -> None:
    analysis = record["analysis"]
    b = analysis["boundaries"]
    print(f"\nboundaries chosen on val: epsilon = {b['epsilon']:.4f} nats, delta = {b['delta']:.4f} "
          f"(right - wrong on val = {b['score']})")
    print(f"{'T':>8} {'d':>5} {'dense test':>10} {'pruned test error':>20} {'mc':>16} {'CKA':>6} regime")
    for c in analysis["cells"]:
        print(f"{c['temperature']:>8g} {c['density']:>5g} {c['dense_test_error']:>10.2%} "
              f"{_pm(c['test_error'], c['test_error_std']):>20} {c['mc']:>+8.4f} ± {c['mc_std']:.4f} "
              f"{c['cka_outputs']:>6.3f} {c['regime']}")
    print("\nraising the temperature (test error change, +: hurts, -: helps; * beyond the spread):")
    for e in analysis["effect"]:
        mark = "*" if e["effect"] else " "
        print(f"  d={e['density']:g}: {e['from']:g} -> {e['to']:g}: {e['change']:+.2%} "
              f"(spread {e['spread']:.2%}){mark}")
    print("\nthe transition: raising the temperature helps beyond the spread at one density and hurts at another:")
    for t in analysis["transitions"]:
        steps = ", ".join(f"d={s['density']:g} {s['change']:+.2%} (spread {s['spread']:.2%})"
                          for s in t["helps"] + t["hurts"])
        print(f"  {t['from']:g} -> {t['to']:g}: {steps}")
    if not analysis["transitions"]:
        print("  none: every raise helps at every density, hurts at every density, or ties")
    d, w = analysis["direction"], analysis["walks"]
    print(f"\ncase 1, direction (test): right {d['right']}, wrong {d['wrong']}, tie {d['tie']} of {d['total']} steps; "
          f"walks within the spread of the best {w['within_spread']} / {w['total']}, staying put "
          f"{w['stay_within_spread']}; the walk better than staying {w['better_than_staying']}, worse "
          f"{w['worse_than_staying']}")
    for s in analysis["selection"]:
        print(f"case 2, selection d={s['density']:g}: rule {_pm(s['rule'], s['rule_std'])}, random "
              f"{_pm(s['random'], s['random_std'])}, best dense {_pm(s['best_dense'], s['best_dense_std'])}, "
              f"best {_pm(s['best'], s['best_std'])}; rule vs random {s['rule_vs_random']:+d}, "
              f"vs best dense {s['rule_vs_best_dense']:+d}")
    for t in record.get("sam", {}).get("tuning", []):
        print(f"case 3, SAM rho d={t['density']:g} from {t['start']:g}: rule -> {t['rule']:g} "
              f"({_pm(t['rule_error'], t['rule_error_std'])}, {t['rule_cells']} cells), grid -> {t['grid']:g} "
              f"({_pm(t['grid_error'], t['grid_error_std'])}, {t['grid_cells']} cells): {t['rule_vs_grid']:+d}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRUNESCOPE_DATA_DIR"))
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit-train", type=int, default=20000, help="stratified train examples (0: all)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--temperature", default="lr")
    parser.add_argument("--values", default="0.003,0.01,0.03,0.1,0.3")
    parser.add_argument("--densities", default="0.02,0.05,0.1,0.2,0.5")
    parser.add_argument("--epochs", type=int, default=5, help="dense epochs (unless the temperature is epochs)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3, help="recovery seeds per cell")
    parser.add_argument("--dense-seeds", type=int, default=3, help="replicates of the diagram (dense seeds)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--finetune-lr", type=float, default=0.1)
    parser.add_argument("--recovery-temperature", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bn-batches", type=int, default=4)
    parser.add_argument("--sam-values", default="", help="SAM radii for case 3, e.g. 0,0.02,0.05,0.1,0.2")
    parser.add_argument("--sam-densities", default="0.05,0.2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--work", type=Path, default=Path("bench-work/regimes"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "regimes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads, "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "note": "seconds are wall time; on the 2-core CPU shared with other jobs"},
        "prunescope_version": prunescope.__version__, "replicates": [],
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        record["seconds"] = time.perf_counter() - started
        args.results.write_text(json.dumps(record, indent=1))

    def progress(key: str, done: int, total: int) -> None:
        print(f"{done}/{total} {key} ({time.perf_counter() - started:.0f} s)", flush=True)

    summaries = []
    for replicate in range(args.dense_seeds):
        settings = settings_of(args, dense_seed=replicate)
        record["settings"] = settings.identity() | {"dense_seeds": args.dense_seeds}
        summaries.append(study(settings, args.work / f"dense-seed{replicate}", on_job=progress))
        record["replicates"] = summaries
        save()
    record["analysis"] = analyse(summaries)
    save()
    if args.sam_values:
        sam_settings = settings_of(args, temperature="sam-rho", values=_floats(args.sam_values), optimizer="sam",
                                   densities=_floats(args.sam_densities))
        sam = study(sam_settings, args.work / "sam", on_job=progress)
        cells = cases.combine([sam])
        b = record["analysis"]["boundaries"]
        record["sam"] = {"settings": sam_settings.identity(), "summary": sam,
                         "note": "one dense seed: the spread is over the recovery seeds",
                         "tuning": cases.tuning(cells, b["epsilon"], b["delta"]),
                         "direction": cases.direction(cells, b["epsilon"], b["delta"])}
        save()
    analysis = record["analysis"]
    figure = plot(analysis["cells"], summaries[0]["temperatures"], summaries[0]["densities"], args.temperature,
                  args.results.with_suffix(".png"))
    print_tables(record)
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min on {device} ({args.threads} thread(s)); "
          f"raw results: {args.results}, phase diagram: {figure}")


if __name__ == "__main__":
    main()
