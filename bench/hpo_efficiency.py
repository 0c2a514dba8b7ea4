"""HPO efficiency: best val accuracy vs epochs spent for random, TPE, GP and BOHB-like, against the full grid.

LeNet-5 on Fashion-MNIST, a stratified subset of the train split (CPU budget; the output
says how many examples), val 1/60 of the train split (1,000 examples). The space is lr
(log, 0.003–0.3) × momentum (0–0.95), batch 64, a fixed number of epochs per full trial.

Every trial trains on ``--device`` (auto: CUDA when present), recorded in the output; the
raw file is rewritten after the grid and after every repeat, so a killed run keeps them.

1. the **full grid** (``--grid`` points per axis, every point trained for the full epochs,
   one seed): its best val accuracy is the reference, its epochs the grid's budget;
2. each search (:mod:`prunescope.hparams.search`) runs until it has spent ``--fraction`` of
   the grid's epochs (a trial stopped early by BOHB-like's Hyperband counts the epochs it
   ran), ``--repeats`` times with different sampler seeds (training seed fixed, as on the grid);
3. per search and budget checkpoint: the best val accuracy of a *finished* trial so far
   (a trial stopped early never counts), mean ± sample std over the repeats.

Goal (issue 13): BOHB-like within 0.5 point of the grid optimum at ≤ 25% of the grid's
budget. Raw per-repeat histories go to ``bench/results/hpo_efficiency.json``.

    PRUNESCOPE_DATA_DIR=../shared/data python bench/hpo_efficiency.py
    python bench/hpo_efficiency.py --limit-train 1000 --epochs 4 --grid 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import optuna
import torch

from prunescope.data import load_dataset
from prunescope.device import resolve_device
from prunescope.hparams.grid import Grid, run_grid
from prunescope.hparams.search import SEARCHES, STARTUP_TRIALS, TrainObjective, sampler_for
from prunescope.hparams.space import parse_space
from prunescope.hparams.studies import finished
from prunescope.hparams.trials import Recipe
from prunescope.models import model_spec
from prunescope.scan.study import quiet_optuna

RESULTS = Path(__file__).resolve().parent / "results" / "hpo_efficiency.json"


def _space(epochs: int):
    return parse_space({"lr": {"low": 0.003, "high": 0.3, "log": True}, "momentum": {"low": 0.0, "high": 0.95},
                        "batch_size": 64, "epochs": epochs})


def _grid(space, points: int) -> Grid:
    lr = tuple(float(f"{v:.4g}") for v in np.geomspace(0.003, 0.3, points))
    momentum = tuple(float(f"{v:.4g}") for v in np.linspace(0.0, 0.95, points))
    return Grid(("lr", "momentum"), (lr, momentum), ())


def _search(space, recipe: Recipe, method: str, seed: int, budget_epochs: int, startup: int,
            epochs: int) -> list[dict]:
    """Run ``method`` until it has spent ``budget_epochs``; the trials in order (Hyperband's top rung: ``epochs``)."""
    sampler, pruner = sampler_for(method, seed, startup, max_resource=epochs)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def stop_when_spent(study_: optuna.Study, _trial) -> None:
        if sum(int(t.user_attrs.get("epochs", 0)) for t in finished(study_)) >= budget_epochs:
            study_.stop()

    study.optimize(TrainObjective(space, recipe, seed=0), callbacks=[stop_when_spent])
    return [{"number": t.number, "state": t.state.name, "value": t.value, "epochs": t.user_attrs.get("epochs"),
             "params": t.params} for t in finished(study)]


def _best_by(trials: list[dict], epochs: int, full: int) -> float | None:
    """Best value of a trial that finished all ``full`` epochs, among the trials done within ``epochs`` spent."""
    spent, best = 0, None
    for t in trials:
        spent += t["epochs"]
        if spent > epochs:
            break
        if t["state"] == "COMPLETE" and t["epochs"] == full:
            best = t["value"] if best is None else max(best, t["value"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit-train", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grid", type=int, default=4, help="points per axis of the full grid")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.25, help="search budget as a fraction of the grid's")
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--startup", type=int, default=STARTUP_TRIALS,
                        help="random trials before TPE / GP model the results")
    parser.add_argument("--val-fraction", type=float, default=1 / 60)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    device = str(resolve_device(args.device))
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, val_fraction=args.val_fraction,
                        limit_train=args.limit_train)
    spec = model_spec("lenet5", data.input_shape, data.num_classes)
    recipe = Recipe(spec, data.spec, device=device, data=data)
    head = {"command": " ".join(sys.argv), "device": device, "torch": torch.__version__, "optuna": optuna.__version__,
            "settings": {**{k: str(v) for k, v in vars(args).items()}, "train": len(data.train),
                         "val": len(data.val)}}

    def save(**parts) -> None:  # raw results so far: a killed run keeps every finished repeat
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**head, **parts}, indent=1))

    space = _space(args.epochs)
    grid = _grid(space, args.grid)
    with quiet_optuna():
        values = run_grid(space, grid, recipe, [0], storage=None, name="full grid", identity={})[0]
    grid_epochs = values.size * args.epochs
    budget = int(args.fraction * grid_epochs)
    optimum = float(values.max())
    best = np.unravel_index(values.argmax(), values.shape)
    where = {axis: grid.values[i][j] for i, (axis, j) in enumerate(zip(grid.axes, best, strict=True))}
    print(f"full grid {grid.shape}: best val {optimum:.2%} at {where}, {grid_epochs} epochs; "
          f"search budget {budget} epochs ({args.fraction:.0%})", flush=True)
    raw_grid = {**grid.to_dict(), "values": values.tolist(), "optimum": optimum, "epochs": grid_epochs}
    runs: dict[str, list[list[dict]]] = {}
    save(grid=raw_grid, budget_epochs=budget, runs=runs, partial=True)
    for method in args.searches.split(","):
        runs[method] = []
        for repeat in range(args.repeats):
            with quiet_optuna():
                runs[method].append(_search(space, recipe, method, seed=repeat, budget_epochs=budget,
                                            startup=args.startup, epochs=args.epochs))
            save(grid=raw_grid, budget_epochs=budget, runs=runs, partial=True)
            print(f"{method} repeat {repeat}: best {_best_by(runs[method][-1], budget, args.epochs)}", flush=True)
    checkpoints = sorted({max(args.epochs, budget // 4), budget // 2, budget})
    table = {}
    for method, repeats in runs.items():
        table[method] = {}
        for epochs in checkpoints:
            bests = [b for b in (_best_by(r, epochs, args.epochs) for r in repeats) if b is not None]
            table[method][epochs] = {
                "mean": statistics.mean(bests) if bests else None,
                "std": statistics.stdev(bests) if len(bests) > 1 else 0.0,
                "repeats_with_a_finished_trial": len(bests),
            }
    print(f"\nbest val accuracy of a finished trial vs epochs spent (mean ± sd over {args.repeats} repeats); "
          f"grid optimum {optimum:.2%} ({grid_epochs} epochs)")
    print("search    " + "".join(f"{e:>18}" for e in checkpoints) + "   gap to grid at budget")
    goal = {}
    for method, row in table.items():
        cells = "".join(f"{row[e]['mean']:>11.2%} ± {row[e]['std'] * 100:.2f}" if row[e]["mean"] is not None
                        else f"{'-':>18}" for e in checkpoints)
        final = row[budget]["mean"]
        gap = None if final is None else (optimum - final) * 100
        goal[method] = gap
        print(f"{method:<10}{cells}   {'-' if gap is None else f'{gap:+.2f} pts'}")
    met = goal.get("bohb") is not None and goal["bohb"] <= 0.5
    print(f"\ngoal (BOHB-like within 0.5 pt of the grid optimum at <= {args.fraction:.0%} of its budget): "
          f"{'met' if met else 'NOT met'}")
    seconds = time.perf_counter() - started
    print(f"{seconds / 60:.1f} min on a 2-core CPU shared with other jobs, torch {torch.__version__}, 1 thread; "
          f"LeNet-5 on {len(data.train)} Fashion-MNIST train examples (a stratified subset), val {len(data.val)}")
    save(date=datetime.now(UTC).isoformat(timespec="seconds"),
         machine=f"{platform.machine()} {platform.processor() or ''} {platform.node()}, 2 cores shared, 1 thread",
         seconds=seconds, grid=raw_grid, budget_epochs=budget, table=table, gap_points=goal, goal_met=met, runs=runs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
