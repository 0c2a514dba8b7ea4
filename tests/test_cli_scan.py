"""scan → pick → compare from the command line, and one-line errors for their bad input."""

import json
import shutil

import pytest

from prunescope.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two MLPs trained on digits (different seeds) through the CLI."""
    paths = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"train{seed}")
        with pytest.raises(SystemExit) as done:
            main(["train", "--epochs", "3", "--seed", str(seed), "--out", str(out), "--device", "cpu"])
        assert (done.value.code or 0) == 0
        paths.append(out / "model.pt")
    return paths


@pytest.fixture(scope="module")
def scanned(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    with pytest.raises(SystemExit) as done:
        main(["scan", "--checkpoint", str(checkpoints[0]), "--out", str(out), "--tolerance", "1", "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return out


def test_scan_writes_curves_and_resumes_without_evaluating(cli, checkpoints, scanned, tmp_path):
    doc = json.loads((scanned / "scan.json").read_text())
    assert doc["command"] == "scan" and set(doc["curves"]["curves"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert (scanned / "plots" / "curves.png").stat().st_size > 0
    assert (scanned / "study.journal").exists()
    copy = tmp_path / "scan"
    shutil.copytree(scanned, copy)
    code, out, _ = cli("scan", "--checkpoint", checkpoints[0], "--out", copy, "--tolerance", "1",
                        "--device", "cpu")
    assert code == 0
    evaluations = doc["curves"]["evaluations"]
    assert doc["curves"]["evaluated_here"] == evaluations  # the first scan evaluated everything itself
    # The second scan evaluated nothing itself: every evaluation is the first process's (issue 25).
    assert (f"{evaluations} evaluations ({evaluations} reused from the study): 0 evaluated by this scan, "
            f"{evaluations} by other processes") in " ".join(out.split())


def test_scan_accepts_an_earlier_scans_journal_as_storage(cli, checkpoints, scanned, tmp_path):
    """A real journal given with --storage is read, not refused, and left a journal (issue 25)."""
    journal = tmp_path / "shared.journal"
    shutil.copy(scanned / "study.journal", journal)
    code, out, err = cli("scan", "--checkpoint", checkpoints[0], "--storage", journal, "--out", tmp_path / "scan",
                         "--tolerance", "1", "--device", "cpu")
    assert code == 0, err
    assert "0 evaluated by this scan" in " ".join(out.split())
    assert journal.read_bytes() == (scanned / "study.journal").read_bytes()  # nothing new to record


def test_pick_threshold_and_budget(cli, scanned, tmp_path):
    code, out, _ = cli("pick", "--scan", scanned, "--picker", "threshold", "--max-drop", "1",
                        "--out", tmp_path / "threshold.json", "--device", "cpu")
    assert code == 0 and "threshold pick" in out
    doc = json.loads((tmp_path / "threshold.json").read_text())
    assert doc["verified"]["measured_drop"] <= 0.01 or not doc["verified"]["within_bound"]
    # Cross-validated on 3 val folds by default: the threshold used is the one chosen there.
    assert doc["crossval"]["k"] == 3 and doc["pick"]["details"]["max_drop"] == doc["crossval"]["threshold"]
    assert doc["bound"] == doc["crossval"]["threshold"] <= 0.01
    assert "cross-validated on 3 val folds: held-out drop" in " ".join(out.split())
    code, _, _ = cli("pick", "--scan", scanned, "--picker", "budget", "--target-sparsity", "0.5",
                      "--out", tmp_path / "budget.json", "--device", "cpu")
    assert code == 0
    doc = json.loads((tmp_path / "budget.json").read_text())
    assert doc["global_sparsity"] == pytest.approx(0.5, abs=3 / 17_000)


def test_compare_with_a_scan(cli, checkpoints, scanned, tmp_path):
    code, out, _ = cli("compare", "--checkpoint", checkpoints[0], "--scan", scanned, "--sparsities",
                        "0.5,0.8", "--out", tmp_path, "--device", "cpu")
    assert code == 0 and "ours" in out and "lamp" in out
    doc = json.loads((tmp_path / "result.json").read_text())
    rows = doc["comparison"]["rows"]
    assert {r["method"] for r in rows} == {"ours", "uniform", "uniform+", "global", "erk", "lamp"}
    assert all(r["achieved"] == pytest.approx(r["sparsity"], abs=3 / 17_000) for r in rows if r["error"] is None)
    assert all(r["test"] is not None for r in rows if r["error"] is None)
    assert (tmp_path / "plots" / "val_accuracy.png").exists()


def test_compare_with_reconstruction_and_wanda(cli, checkpoints, tmp_path):
    code, out, _ = cli("compare", "--checkpoint", checkpoints[0], "--allocations", "global,erk", "--sparsities", "0.9",
                        "--reconstruct", "mask", "--calibration", "256", "--out", tmp_path / "refit", "--device", "cpu")
    assert code == 0, out
    refit = json.loads((tmp_path / "refit" / "result.json").read_text())
    assert refit["comparison"]["reconstruct"] == "mask" and refit["settings"]["calibration"] == 256
    code, _, _ = cli("compare", "--checkpoint", checkpoints[0], "--allocations", "global,erk", "--sparsities", "0.9",
                      "--out", tmp_path / "plain", "--device", "cpu")
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())
    for r, p in zip(refit["comparison"]["rows"], plain["comparison"]["rows"], strict=True):
        assert r["removed"] == p["removed"] and r["val"]["loss"] < p["val"]["loss"]
    code, _, _ = cli("compare", "--checkpoint", checkpoints[0], "--allocations", "uniform", "--sparsities", "0.5",
                      "--criterion", "wanda", "--out", tmp_path / "wanda", "--device", "cpu")
    assert code == 0


@pytest.mark.parametrize("globs", [["--include", "fc1*"], ["--exclude", "fc1*"]])
def test_compare_with_include_or_exclude_puts_every_row_at_its_target(cli, checkpoints, scanned, tmp_path, globs):
    # The scan covers every layer; the budget must be spread over the compared layers only.
    code, out, _ = cli("compare", "--checkpoint", checkpoints[0], "--scan", scanned, "--sparsities", "0.8",
                        *globs, "--out", tmp_path, "--device", "cpu", "--no-test")
    assert code == 0 and "ours was selected with joint val evaluations" in " ".join(out.split())
    doc = json.loads((tmp_path / "result.json").read_text())
    weights = doc["comparison"]["weights"]
    assert weights == (128 * 64 if globs[0] == "--include" else 64 * 128 + 10 * 64)
    for row in doc["comparison"]["rows"]:
        if row["error"] is None:
            assert abs(row["removed"] - round(0.8 * weights)) <= 1, row["method"]
            assert set(row["allocation"]) == ({"fc1.weight"} if globs[0] == "--include" else
                                              {"fc2.weight", "fc3.weight"})


BAD = [
    (lambda c, s, t: ["pick", "--scan", t / "nowhere"], "no scan in"),
    (lambda c, s, t: ["pick", "--scan", s, "--checkpoint", c[1]], "belongs to another model"),
    (lambda c, s, t: ["compare", "--checkpoint", c[1], "--scan", s, "--out", t], "belongs to another model"),
    (lambda c, s, t: ["pick", "--scan", s, "--picker", "budget", "--target-sparsity", "0.9995"], "above what"),
    (lambda c, s, t: ["pick", "--scan", s, "--picker", "budget", "--target-sparsity", "0.5", "--max-drop", "1"],
     "does not take max_drop (--max-drop)"),
    (lambda c, s, t: ["pick", "--scan", s, "--picker", "threshold", "--target-sparsity", "0.5"],
     "target_sparsity applies to budget"),
    (lambda c, s, t: ["pick", "--scan", s, "--picker", "budget"], "budget"),
    (lambda c, s, t: ["pick", "--scan", s, "--picker", "magic"], "unknown picker"),
    (lambda c, s, t: ["scan", "--checkpoint", c[1], "--out", s], "belongs to another model"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--storage", "nosuchdb://x/y"], "storage"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--strategy", "random"], "--strategy"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--workers", "0"], "workers"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--subset", "half"], "or 'auto'"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--granularity", "filter"], "--granularity"),
    (lambda c, s, t: ["scan", "--checkpoint", c[0], "--out", t, "--granularity", "channel", "--importance", "x"],
     "--importance"),
    (lambda c, s, t: ["compare", "--checkpoint", c[0], "--allocations", "ours,magic", "--out", t], "magic"),
    (lambda c, s, t: ["compare", "--checkpoint", c[0], "--allocations", "global", "--reconstruct", "exact",
                      "--out", t], "--reconstruct"),
    (lambda c, s, t: ["compare", "--checkpoint", c[0], "--allocations", "global", "--reconstruct", "mask",
                      "--calibration", "0", "--out", t], "calibration size 0"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD)
def test_bad_input_is_one_line_and_leaves_the_scan_intact(cli, checkpoints, scanned, tmp_path, argv, expected):
    journal = (scanned / "study.journal").read_bytes()
    scan_json = (scanned / "scan.json").read_bytes()
    code, _, err = cli(*argv(checkpoints, scanned, tmp_path))
    message = err.strip()
    assert code == 2, message
    assert message.startswith("error:") and "\n" not in message and expected in message
    assert (scanned / "study.journal").read_bytes() == journal
    assert (scanned / "scan.json").read_bytes() == scan_json
