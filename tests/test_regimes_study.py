"""The regime study end to end on a tiny grid, its resume, model selection and its bad input."""

import concurrent.futures
import json
import threading
import time
from collections import Counter
from unittest import mock

import optuna
import pytest
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.errors import UsageError
from prunescope.regimes import study as study_module
from prunescope.regimes.select import check_family, select
from prunescope.regimes.study import RegimeSettings, study
from prunescope.regimes.trials import JobObjective, open_jobs, run_jobs
from prunescope.targets import find_targets
from prunescope.trials.points import LOCAL, QueuedStudy
from prunescope.trials.queue import point_of
from prunescope.trials.storage import open_storage

TINY = {"limit_train": 300, "values": (1, 4), "densities": (0.1, 0.5), "finetune_epochs": 1, "epochs": 2}


def _density(path):
    model = load_checkpoint(path).model
    targets = find_targets(model)
    kept = sum(int((model.get_submodule(t.module).weight != 0).sum()) for t in targets)
    return kept / sum(t.numel for t in targets)


def test_tiny_default_study_runs_and_prunes_to_the_densities(tmp_path):
    settings = RegimeSettings(**TINY)
    summary = study(settings, tmp_path)
    cells = {(c["temperature"], c["density"]): c for c in summary["cells"]}
    assert sorted(cells) == [(1, 0.1), (1, 0.5), (4, 0.1), (4, 0.5)]
    for (value, density), cell in cells.items():
        assert cell["regime"] in ("I", "II-A", "II-B")
        assert len(cell["errors"]) == 2 and len(cell["pairs"]) == 1
        assert len(cell["pairs"][0]["path"]["t"]) == 11
        assert cell["cka_features"] is not None
        for seed in (0, 1):  # exactly round((1 - d) · N) weights removed: the density asked for
            assert _density(tmp_path / "cells" / f"T={value:g}" / f"d={density:g}" / f"seed{seed}.pt") == \
                pytest.approx(density, abs=1e-4)
    assert [a["density"] for a in summary["advice"]] == [0.1, 0.5]
    assert all(a["chosen"] in (1, 4) and a["best"] in (1, 4) for a in summary["advice"])
    # one-mask pairing: one dense model per temperature.
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["T=1", "T=4"]
    assert [p.name for p in (tmp_path / "dense" / "T=4").iterdir()] == ["seed0"]


def test_a_killed_study_resumes_without_redoing_finished_jobs(tmp_path):
    settings = RegimeSettings(**TINY)

    class Killed(Exception):
        pass

    def kill_after_first_cell(key, done, total):
        if key.startswith("cell"):
            raise Killed

    with pytest.raises(Killed):
        study(settings, tmp_path, on_job=kill_after_first_cell)
    ran = []
    real = study_module.run_job

    def spy(settings, out, key):
        ran.append(key)
        return real(settings, out, key)

    with mock.patch.object(study_module, "run_job", side_effect=spy):
        summary = study(settings, tmp_path)
    assert sorted(ran) == ["cell T=1 d=0.5", "cell T=4 d=0.1", "cell T=4 d=0.5"]
    assert len(summary["cells"]) == 4
    with mock.patch.object(study_module, "run_job", side_effect=spy):
        study(settings, tmp_path)  # everything finished: nothing runs again
    assert len(ran) == 3


def test_study_with_other_settings_in_the_same_out_is_refused(tmp_path):
    study(RegimeSettings(**TINY), tmp_path)
    journal = (tmp_path / "study.journal").read_bytes()
    with pytest.raises(UsageError, match="other settings"):
        study(RegimeSettings(**(TINY | {"densities": (0.2,)})), tmp_path)
    assert (tmp_path / "study.journal").read_bytes() == journal


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seeds": 1}, "compare two models"),
        ({"densities": (0.1, 1.3)}, "outside (0, 1]"),
        ({"densities": (0.0,)}, "outside (0, 1]"),
        ({"temperature": "sam-rho", "values": (0.0, 0.1)}, "sgd has no rho"),
        ({"temperature": "epochs", "values": (2.5,)}, "whole numbers"),
        ({"temperature": "heat"}, "unknown --temperature"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("]", r"\]")):
        RegimeSettings(**settings)


def test_sam_rho_is_a_temperature(tmp_path):
    settings = RegimeSettings(**(TINY | {"temperature": "sam-rho", "values": (0.0, 0.2), "optimizer": "sam",
                                         "densities": (0.5,)}))
    assert settings.dense_config(0.2, 0).sam_rho == 0.2 and settings.dense_config(0.2, 0).optimizer == "sam"
    summary = study(settings, tmp_path)
    assert summary["temperatures"] == [0.0, 0.2]


def test_batch_size_temperatures_rise_as_the_batch_shrinks():
    assert RegimeSettings(temperature="batch-size", values=(32, 128, 64)).temperatures() == [128, 64, 32]


def test_cli_writes_report_plots_and_json(cli, tmp_path):
    out = tmp_path / "out"
    code, printed, err = cli("regimes", "--limit-train", "300", "--values", "1,4", "--densities", "0.1,0.5",
                             "--epochs", "2", "--finetune-epochs", "1", "--out", str(out))
    assert code == 0, err
    doc = json.loads((out / "result.json").read_text())
    assert doc["command"] == "regimes" and len(doc["regimes"]["cells"]) == 4
    assert {p.name for p in (out / "plots").iterdir()} == {"phase-error.png", "phase-barrier.png", "phase-cka.png"}
    html = (out / "report.html").read_text()
    assert "Three regimes" in html and html.count("data:image/png") == 3
    assert "density 0.1:" in printed and "regime" in printed


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seeds", "1"], "give at least 2 seeds"),
        (["--densities", "0.1,1.3"], "outside (0, 1]"),
        (["--temperature", "sam-rho", "--values", "0.1"], "has no rho"),
        (["--executor", "threads"], "unknown executor 'threads'"),
        (["--workers", "0"], "workers must be at least 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_out_untouched(cli, tmp_path, argv, expected):
    out = tmp_path / "out"
    code, _, err = cli("regimes", *argv, "--out", str(out))
    assert code == 2
    assert err.strip().startswith("error:") and "\n" not in err.strip() and expected in err
    assert not out.exists()


def test_selection_reports_the_choice_against_the_family(tmp_path):
    from prunescope.data import load_dataset
    from prunescope.models import build_model, model_spec
    from prunescope.train import TrainConfig, train

    data = load_dataset("digits", limit_train=300)
    paths = []
    for epochs in (1, 4):
        torch.manual_seed(0)
        model = build_model("mlp", data.input_shape, data.num_classes)
        path = tmp_path / f"e{epochs}.pt"
        train(model, data, TrainConfig(epochs=epochs), device="cpu", checkpoint=path,
              model_spec=model_spec("mlp", data.input_shape, data.num_classes))
        paths.append(path)
    result = select(paths, 0.2, tmp_path / "out", finetune_epochs=1)
    errors = [m["error"] for m in result["members"]]
    assert result["best_error"] == min(errors)
    assert result["chosen_error"] == errors[result["chosen"]]
    assert result["median_error"] == pytest.approx(sum(errors) / 2)
    assert 1 <= result["rank"] <= 2


def test_a_family_of_different_architectures_is_refused(tmp_path):
    mlp = {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {}}
    cnn = mlp | {"name": "cnn"}
    data = {"name": "digits"}
    with pytest.raises(UsageError, match="different architectures"):
        check_family([(tmp_path / "a.pt", mlp, data), (tmp_path / "b.pt", cnn, data)])
    with pytest.raises(UsageError, match="at least two"):
        check_family([(tmp_path / "a.pt", mlp, data)])


def test_select_cli_refuses_a_family_of_two_architectures(cli, tmp_path):
    from prunescope.data import load_dataset
    from prunescope.models import build_model, model_spec
    from prunescope.train import TrainConfig, train

    data = load_dataset("digits", limit_train=100)
    paths = []
    for hidden in ([16], [32]):
        path = tmp_path / f"h{hidden[0]}.pt"
        model = build_model("mlp", data.input_shape, data.num_classes, hidden=hidden)
        train(model, data, TrainConfig(epochs=1), device="cpu", checkpoint=path,
              model_spec=model_spec("mlp", data.input_shape, data.num_classes, hidden=hidden))
        paths.append(str(path))
    out = tmp_path / "out"
    code, _, err = cli("regimes", "select", "--checkpoints", *paths, "--density", "0.1", "--out", str(out))
    assert code == 2 and "different architectures" in err and "\n" not in err.strip()
    code, _, err = cli("regimes", "select", "--checkpoints", *paths, "--density", "1.5", "--out", str(out))
    assert code == 2 and "outside (0, 1]" in err
    assert not out.exists()


def _echo(key: str) -> dict:
    time.sleep(0.005)  # a job that takes a moment, so that the two planners' runs interleave
    return {"key": key}


def test_two_planners_racing_on_one_regime_study_queue_and_run_each_job_once(tmp_path):
    """Two studies started at the same moment on one journal (as two processes would): planning
    under the study's lock queues each job once, where reading the queue then writing it queued
    every job twice."""
    keys = tuple(f"cell T=1 d={i}" for i in range(20))
    place = LOCAL.place(str(tmp_path / "study.journal"), "regimes")
    start = threading.Barrier(2)

    def planner() -> dict:
        opened = open_jobs(place, {"settings": "the same"})
        with QueuedStudy(opened, place, JobObjective(keys, _echo), LOCAL) as jobs:
            start.wait()
            return run_jobs(jobs, keys)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [future.result() for future in [pool.submit(planner) for _ in range(2)]]
    assert results == [{k: {"key": k} for k in keys}] * 2
    queued = Counter(t.system_attrs["fixed_params"]["job"] for t in optuna.load_study(
        study_name="regimes", storage=open_storage(tmp_path / "study.journal")).trials if point_of(t) is not None)
    assert queued == dict.fromkeys(keys, 1)
