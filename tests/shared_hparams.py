"""One hyperparameter study process for the tests of studies on executors (not a test module).

``python tests/shared_hparams.py OUT [--executor K] [--workers N]`` runs :func:`config`'s
tiny study (an MLP on digits, 4 search trials, two 2x2 grids of 2 seeds) into ``OUT`` with
one torch thread, and writes its tables to ``OUT/tables.json``. With
``SHARED_HPARAMS_SLOW=S`` in the environment every training first sleeps ``S`` seconds, so
that a test can kill the study mid-trial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunescope.hparams import HparamsConfig, study
from prunescope.hparams.trials import Recipe

SLOW = float(os.environ.get("SHARED_HPARAMS_SLOW", "0"))  # read again by spawned workers, which import this module
SPACE = {"lr": {"low": 0.005, "high": 0.5, "log": True}, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
         "epochs": 2}
GRIDS = ("grid weight global 0", "grid weight global 0.8")  # the grid studies' names, least pruned first

if SLOW:
    train = Recipe.run

    def slowly(self, *args, **kwargs):
        time.sleep(SLOW)
        return train(self, *args, **kwargs)

    Recipe.run = slowly


def config(executor: str | None = None, workers: int = 1) -> HparamsConfig:
    """The tiny study every run of these tests makes (4 search trials: all random, the same on any executor)."""
    return HparamsConfig(limit_train=300, space=SPACE, budget=4, grid="2x2", seeds=2, granularity="weight",
                         levels=(0.0, 0.8), allocator="global", device="cpu", executor=executor, workers=workers)


def tables(out: Path, executor: str | None = None, workers: int = 1) -> dict:
    """Run the study into ``out`` with one torch thread (as its workers have); its tables, as read back from JSON."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = study(config(executor, workers), out)
    finally:
        torch.set_num_threads(threads)
    return json.loads(json.dumps(comparable(result.to_dict())))


def comparable(tables: dict) -> dict:
    """The tables without what differs between runs of one study (trial numbers, paths, the settings)."""
    search = {**tables["search"], "trials": sorted((t | {"number": None} for t in tables["search"]["trials"]),
                                                   key=lambda t: json.dumps(t["params"], sort_keys=True))}
    landscapes = [ls | {"degree": ls["degree"] | {"checkpoint": None}} for ls in tables["landscapes"]]
    return {k: v for k, v in tables.items() if k != "settings"} | {"search": search, "landscapes": landscapes}


def launch(out: Path, *, slow: float = 0.0, executor: str | None = None, workers: int = 1) -> subprocess.Popen:
    """Start this script as a study process (see the module's docstring)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "SHARED_HPARAMS_SLOW": str(slow)}
    command = [sys.executable, __file__, str(out), "--workers", str(workers)]
    if executor is not None:
        command += ["--executor", executor]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--executor", default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    found = tables(args.out, args.executor, args.workers)
    (args.out / "tables.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
