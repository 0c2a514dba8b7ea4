"""One scan process for the tests of shared studies (not a test module).

``python tests/shared_scan.py STORAGE NAME RESULT [--gate DIR] [--executor K] [--workers N]``
trains the same small MLP as every other run, with ``--gate`` writes ``DIR/PID.ready`` and
waits for ``DIR/go`` (so that several processes start scanning at the same moment), scans it
into study ``NAME`` at ``STORAGE`` and writes the curves and a threshold pick to ``RESULT``
(JSON). With ``SHARED_SCAN_SLOW=S`` in the environment every evaluation first sleeps ``S``
seconds, so that a test can kill a process mid-trial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest, for spawned workers too

from conftest import make_dataset

from prunescope.models import MLP
from prunescope.pick.pickers import ThresholdPicker
from prunescope.scan import scan
from prunescope.scan.evaluation import ModelEvaluation

LEVELS = (0.3, 0.6, 0.8, 0.95)
SLOW = float(os.environ.get("SHARED_SCAN_SLOW", "0"))  # read again by spawned workers, which import this module

if SLOW:
    evaluate = ModelEvaluation.__call__

    def slowly(self, target, sparsity, n):
        time.sleep(SLOW)
        return evaluate(self, target, sparsity, n)

    ModelEvaluation.__call__ = slowly


def trained() -> tuple[torch.nn.Module, object]:
    """The same small MLP, trained for a moment on the tiny synthetic dataset, in every process."""
    torch.manual_seed(0)
    data = make_dataset(n_val=90)
    model = MLP((1, 4, 4), 3, hidden=(12,))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        optimiser.step()
    return model.eval(), data


def uninterrupted() -> dict:
    """An uninterrupted scan in this process, in memory (one torch thread, as the scan processes):
    the curves, pick and evaluation count every other run must give, as read back from JSON."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, data = trained()
        curves = scan(model, data, strategy="grid", levels=LEVELS, device="cpu")
    finally:
        torch.set_num_threads(threads)
    pick = ThresholdPicker(max_drop=0.02).pick(curves).allocation
    return json.loads(json.dumps({"curves": curves.to_dict(), "pick": pick, "evaluations": curves.evaluations}))


def launch(
    storage: str | Path, name: str, result: Path, *, gate: Path | None = None, slow: float = 0.0,
    executor: str | None = None, workers: int = 1,
) -> subprocess.Popen:
    """Start this script as a scan process (see the module's docstring)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "SHARED_SCAN_SLOW": str(slow)}
    command = [sys.executable, __file__, str(storage), name, str(result), "--workers", str(workers)]
    if gate is not None:
        command += ["--gate", str(gate)]
    if executor is not None:
        command += ["--executor", executor]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load(storage: str | Path, name: str) -> optuna.Study:
    """The study as a reader sees it (a journal file or a URL)."""
    location = str(storage)
    if "://" in location:
        return optuna.load_study(study_name=name, storage=location)
    backend = optuna.storages.journal.JournalFileBackend(location)
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))


def point(trial: optuna.trial.FrozenTrial) -> tuple:
    params = trial.system_attrs["fixed_params"]
    return params["target"], params["sparsity"], params["n"]


def states_by_point(study: optuna.Study) -> dict[tuple, Counter]:
    """Per queued point, its trials' states (the failed stand-ins of an empty queue left out)."""
    found: dict[tuple, Counter] = {}
    for trial in study.get_trials(deepcopy=False):
        if "fixed_params" in trial.system_attrs:
            found.setdefault(point(trial), Counter())[trial.state] += 1
    return found


def wait_for_study(storage: str | Path, name: str, processes: list[subprocess.Popen]) -> optuna.Study:
    """The study, once one of ``processes`` (all still running) has created it."""
    deadline = time.time() + 300
    while True:
        try:
            return load(storage, name)
        except (KeyError, OSError):  # not created yet
            assert all(p.poll() is None for p in processes) and time.time() < deadline, "no scan created the study"
            time.sleep(0.05)


def running(study: optuna.Study, pid: int | None = None) -> optuna.trial.FrozenTrial | None:
    """A trial that process ``pid`` (None: any process) is evaluating now, if any."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is not None and pid in (None, worker["pid"]):
            return trial
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("name")
    parser.add_argument("result")
    parser.add_argument("--gate", type=Path, default=None)
    parser.add_argument("--executor", default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, data = trained()
    if args.gate is not None:
        (args.gate / f"{os.getpid()}.ready").touch()
        while not (args.gate / "go").exists():
            time.sleep(0.01)
    curves = scan(model, data, strategy="grid", levels=LEVELS, storage=args.storage, study_name=args.name,
                  device="cpu", executor_kind=args.executor, workers=args.workers)
    pick = ThresholdPicker(max_drop=0.02).pick(curves)
    with open(args.result, "w") as out:
        json.dump({"curves": curves.to_dict(), "pick": pick.allocation, "evaluations": curves.evaluations}, out)


if __name__ == "__main__":
    main()
