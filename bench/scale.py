"""Scale-out on one machine: a scan's throughput with 1, 2 and 4 workers (processes, Ray), and the
storage's cost per trial (journal file vs PostgreSQL) against the evaluation's.

1. Throughput. LeNet-300-100 (seeded, untrained: an evaluation costs the same forward pass
   trained or not) scanned on MNIST's val split (6,000 examples) with the grid strategy
   (18 levels x 3 targets + dense = 55 trials) into a fresh journal file, once per executor
   and worker count. Reported: wall time of the whole ``scan`` call (starting the workers,
   each unpickling the model, included), the steady throughput (trials / (last finish -
   first start) in the study) and the mean evaluation time (the trials' ``seconds``).
2. Storage cost. 200 trials whose evaluation does nothing, planned and run in this process
   (the scan's own loop: plan under the lock, ask, heartbeat, tell, read back), per storage:
   in memory (Optuna alone), journal file, PostgreSQL on loopback (a server of its own,
   started like the tests'). Cost per trial = wall / trials.

Every number is the mean ± standard deviation over ``--repeats`` runs; raw runs go to
``--out`` (JSON with command, date, machine, load average). One torch thread per worker.

    python bench/scale.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from prunescope.data import load_dataset
from prunescope.models import build_model
from prunescope.scan import scan
from prunescope.scan.executors import InProcess
from prunescope.scan.study import Measurement, Point, StudySpec, quiet_optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres_server import BINARIES, create_database, local_server

CONFIGS = [("local", 1), ("processes", 1), ("processes", 2), ("processes", 4), ("ray", 1), ("ray", 2), ("ray", 4)]


def _mean(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def throughput_run(model, data, kind: str, workers: int) -> dict:
    """One grid scan of ``model`` on ``kind`` x ``workers`` into a fresh journal."""
    with tempfile.TemporaryDirectory() as work:
        journal = Path(work) / "study.journal"
        start = time.perf_counter()
        curves = scan(model, data, strategy="grid", device="cpu", storage=journal, executor_kind=kind, workers=workers)
        wall = time.perf_counter() - start
        backend = optuna.storages.journal.JournalFileBackend(str(journal))
        trials = optuna.load_study(study_name="scan", storage=optuna.storages.JournalStorage(backend)).get_trials(
            states=(optuna.trial.TrialState.COMPLETE,)
        )
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {
        "executor": kind, "workers": workers, "trials": curves.evaluations, "wall_s": wall,
        "steady_trials_per_s": len(trials) / span,
        "evaluation_s": statistics.mean(t.user_attrs["seconds"] for t in trials),
    }


def storage_run(location: str | None, trials: int) -> dict:
    """``trials`` no-op evaluations through the scan's loop on ``location``; seconds per trial."""
    spec = StudySpec.at(location, "overhead", ("layer",), trials, "accuracy")
    study = spec.open({})
    points = [Point("layer", i / (2 * trials), trials) for i in range(trials)]
    start = time.perf_counter()
    InProcess(lambda *_: Measurement(1.0, 1.0, 1.0)).run(study, points, lambda *_: None)
    return {"seconds_per_trial": (time.perf_counter() - start) / trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRUNESCOPE_DATA_DIR"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--overhead-trials", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", data_dir=args.data_dir)
    torch.manual_seed(0)
    model = build_model("lenet300", data.input_shape, data.num_classes).eval()
    runs: list[dict] = []

    import ray

    # Ray's actors ask for one CPU each: four logical CPUs on this two-core machine, as for the processes.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with quiet_optuna():
        for repeat in range(args.repeats):
            for kind, workers in CONFIGS:
                run = {"part": "throughput", "repeat": repeat, **throughput_run(model, data, kind, workers)}
                print(json.dumps(run), flush=True)
                runs.append(run)
    ray.shutdown()

    server_running = local_server() if BINARIES else contextlib.nullcontext(None)
    with tempfile.TemporaryDirectory() as work, quiet_optuna(), server_running as server:
        for repeat in range(args.repeats):
            storages = {"memory": None, "journal": str(Path(work) / f"overhead{repeat}.journal"),
                        "postgresql": create_database(server, f"overhead{repeat}") if server else None}
            for name, location in storages.items():
                if name == "postgresql" and location is None:
                    continue  # no PostgreSQL binaries on this machine
                cost = storage_run(location, args.overhead_trials)
                run = {"part": "storage", "repeat": repeat, "storage": name, **cost}
                print(json.dumps(run), flush=True)
                runs.append(run)

    evaluation = statistics.mean(r["evaluation_s"] for r in runs if r["part"] == "throughput")
    print(f"\nThroughput, LeNet-300-100 on MNIST val (6,000 examples), 55-trial grid scan, {args.repeats} repeats; "
          "2 CPU cores shared with other jobs:")
    print("| executor | workers | wall s (whole scan) | steady trials/s | evaluation s |\n|---|---|---|---|---|")
    for kind, workers in CONFIGS:
        group = [r for r in runs if r["part"] == "throughput" and (r["executor"], r["workers"]) == (kind, workers)]
        print(f"| {kind} | {workers} | {_mean([r['wall_s'] for r in group], '.1f')} | "
              f"{_mean([r['steady_trials_per_s'] for r in group], '.1f')} | "
              f"{_mean([r['evaluation_s'] for r in group], '.3f')} |")
    print(f"\nStorage cost per trial ({args.overhead_trials} no-op trials), against a mean evaluation of "
          f"{evaluation * 1000:.0f} ms:")
    print("| storage | ms per trial | ÷ evaluation |\n|---|---|---|")
    for name in ("memory", "journal", "postgresql"):
        group = [r["seconds_per_trial"] for r in runs if r["part"] == "storage" and r["storage"] == name]
        if group:
            milliseconds, ratio = _mean([g * 1000 for g in group], ".1f"), _mean([g / evaluation for g in group], ".2f")
            print(f"| {name} | {milliseconds} | {ratio} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "note": "2 CPU cores shared with other jobs running at the same time; one torch thread per worker"},
        "runs": runs,
    }, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
