"""--reconstruct / --calibration / --reconstruct-fallback on scan, sweep, prune and compare from the command line."""

import json

import pytest
import torch

from prunescope.checkpoint import load_checkpoint
from prunescope.cli import main
from prunescope.masks import removed_count
from prunescope.scan import evaluation
from prunescope.targets import find_targets

ALLOCATION = {"fc1.weight": 0.9, "fc2.weight": 0.8, "fc3.weight": 0.5}




@pytest.fixture(scope="module")
def scans(dense, tmp_path_factory):
    """Grid scans of fc2 alone, with masks alone and re-fitted by reconstruction (mask, 256 examples).

    The scan evaluates in the batch size it measures fastest; here it gets compare's (1024: the whole val split
    in one batch), so that its accuracies are computed exactly as compare computes them, on any CPU.
    """
    outs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "fastest_batch_size", lambda *args, **kwargs: 1024)
        for name, extra in (("plain", []), ("mask", ["--reconstruct", "mask", "--calibration", "256"])):
            outs[name] = tmp_path_factory.mktemp(f"scan-{name}")
            with pytest.raises(SystemExit) as done:
                main(["scan", "--checkpoint", str(dense), "--out", str(outs[name]), "--strategy", "grid",
                      "--include", "fc2", "--device", "cpu", *extra])
            assert (done.value.code or 0) == 0
    return outs


def _scan(directory) -> dict:
    return json.loads((directory / "scan.json").read_text())


def test_a_reconstructed_scan_evaluates_the_same_levels_and_equals_compare_at_each(cli, dense, scans, tmp_path):
    plain, rebuilt = _scan(scans["plain"]), _scan(scans["mask"])
    assert rebuilt["settings"]["reconstruct"] == "mask" and rebuilt["settings"]["calibration"] == 256
    assert plain["settings"]["reconstruct"] is None and plain["settings"]["calibration"] is None
    assert rebuilt["curves"]["reconstruct"] == "mask" and rebuilt["curves"]["fallback"] == {}
    points = {p["sparsity"]: p["value"] for p in rebuilt["curves"]["curves"]["fc2.weight"]["points"]}
    plain_points = {p["sparsity"]: p["value"] for p in plain["curves"]["curves"]["fc2.weight"]["points"]}
    assert list(points) == list(plain_points) and len(points) == 18
    assert points != plain_points  # re-fitted weights answer differently somewhere
    # The one-shot comparison of the same layer alone (uniform allocation) with the same reconstruction.
    levels = [0.5, 0.9, 0.95]
    code, out, _ = cli("compare", "--checkpoint", dense, "--allocations", "uniform", "--include", "fc2",
                       "--sparsities", ",".join(map(str, levels)), "--reconstruct", "mask", "--calibration", "256",
                       "--no-test", "--out", tmp_path, "--device", "cpu")
    assert code == 0, out
    rows = json.loads((tmp_path / "result.json").read_text())["comparison"]["rows"]
    assert [r["sparsity"] for r in rows] == levels
    for row in rows:
        assert row["val"]["accuracy"] == points[row["sparsity"]], row["sparsity"]


@pytest.mark.parametrize(("extra", "expected"), [
    ([], "reconstruct='mask', not 'off'"),
    (["--reconstruct", "obs", "--calibration", "256"], "reconstruct='mask', not 'obs'"),
    (["--reconstruct", "mask", "--calibration", "128"], "calibration=256, not 128"),
])
def test_a_resumed_scan_refuses_other_reconstruction_settings(cli, dense, scans, extra, expected):
    journal, scan_json = (scans["mask"] / "study.journal").read_bytes(), (scans["mask"] / "scan.json").read_bytes()
    code, _, err = cli("scan", "--checkpoint", dense, "--out", scans["mask"], "--strategy", "grid", "--include",
                       "fc2", "--device", "cpu", *extra)
    assert code == 2 and expected in err and "\n" not in err.strip()
    assert (scans["mask"] / "study.journal").read_bytes() == journal
    assert (scans["mask"] / "scan.json").read_bytes() == scan_json


def test_pick_from_a_reconstructed_scan_says_it_verifies_with_masks_alone(cli, scans, tmp_path):
    code, out, _ = cli("pick", "--scan", scans["mask"], "--picker", "budget", "--target-sparsity", "0.5",
                       "--out", tmp_path / "pick.json", "--device", "cpu")
    assert code == 0 and "verified with the criterion's masks alone" in " ".join(out.split())


def test_a_plain_scan_refuses_to_resume_with_reconstruction(cli, dense, scans):
    code, _, err = cli("scan", "--checkpoint", dense, "--out", scans["plain"], "--strategy", "grid", "--include",
                       "fc2", "--device", "cpu", "--reconstruct", "mask")
    assert code == 2 and "reconstruct='off', not 'mask'" in err


def test_sweep_with_reconstruction_keeps_the_counts_and_lowers_the_val_loss(cli, dense, tmp_path):
    losses = {}
    for name, extra in (("plain", []), ("obs", ["--reconstruct", "obs", "--calibration", "300"])):
        code, out, _ = cli("sweep", "--checkpoint", dense, "--sparsities", "0.9", "--out", tmp_path / name,
                           "--device", "cpu", *extra)
        assert code == 0, out
        doc = json.loads((tmp_path / name / "result.json").read_text())
        point = doc["sweep"]["points"][1]
        total = sum(t["numel"] for t in doc["sweep"]["targets"])
        assert round(point["achieved_sparsity"] * total) == sum(
            removed_count(0.9, t["numel"]) for t in doc["sweep"]["targets"])
        losses[name] = point["metrics"]["loss"]
    assert doc["settings"]["reconstruct"] == "obs" and doc["settings"]["calibration"] == 300
    assert doc["settings"]["reconstruct_fallback"] is False and doc["sweep"]["reconstruct"] == "obs"
    assert losses["obs"] < losses["plain"]


def test_prune_saves_the_reconstructed_weights_with_exact_counts(cli, dense, tmp_path):
    allocation = tmp_path / "allocation.json"
    allocation.write_text(json.dumps(ALLOCATION))
    saved = {}
    for name, extra in (("plain", []), ("mask", ["--reconstruct", "mask", "--calibration", "256"]),
                        ("obs", ["--reconstruct", "obs"])):
        code, out, _ = cli("prune", "--checkpoint", dense, "--allocation", allocation, "--finetune-epochs", "0",
                           "--out", tmp_path / name, "--device", "cpu", *extra)
        assert code == 0, out
        saved[name] = load_checkpoint(tmp_path / name / "model.pt").model
    doc = json.loads((tmp_path / "mask" / "result.json").read_text())
    assert doc["settings"]["reconstruct"] == "mask" and doc["settings"]["calibration"] == 256
    assert [layer["name"] for layer in doc["reconstruction"]["layers"]] == list(ALLOCATION)
    assert doc["reconstruction"]["fallback"] == {}
    plain_doc = json.loads((tmp_path / "plain" / "result.json").read_text())
    assert plain_doc["reconstruction"] is None
    assert doc["val"]["one_shot"]["loss"] < plain_doc["val"]["one_shot"]["loss"]
    targets = find_targets(saved["plain"])
    weights = {name: {t.name: model.get_submodule(t.module).weight.detach() for t in targets}
               for name, model in saved.items()}
    for t in targets:
        for name in saved:
            assert int((weights[name][t.name] == 0).sum()) == removed_count(ALLOCATION[t.name], t.numel), (name, t)
        # mask: the criterion's masks, kept weights re-fitted; obs: masks of its own
        assert torch.equal(weights["mask"][t.name] != 0, weights["plain"][t.name] != 0)
        assert not torch.equal(weights["mask"][t.name], weights["plain"][t.name])
    assert json.loads((tmp_path / "obs" / "result.json").read_text())["settings"]["calibration"] == 1024


@pytest.mark.parametrize(("argv", "expected"), [
    (["scan", "--reconstruct", "mask", "--calibration", "0"], "calibration size 0"),
    (["scan", "--reconstruct", "foo"], "unknown --reconstruct 'foo': use one of obs, mask"),
    (["scan", "--reconstruct", "mask", "--granularity", "channel"], "applies to --granularity weight"),
    (["scan", "--calibration", "64"], "apply with --reconstruct"),
    (["scan", "--reconstruct", "mask", "--calibration", "99999"], "calibration size 99999 is outside"),
    (["sweep", "--reconstruct", "mask", "--calibration", "0"], "calibration size 0"),
    (["sweep", "--reconstruct", "foo"], "unknown --reconstruct 'foo'"),
    (["sweep", "--reconstruct-fallback"], "apply with --reconstruct"),
    (["prune", "--allocation", "none.json", "--reconstruct", "mask", "--calibration", "0"], "calibration size 0"),
    (["prune", "--allocation", "none.json", "--reconstruct", "foo"], "unknown --reconstruct 'foo'"),
    (["prune", "--allocation", "none.json", "--reconstruct", "obs", "--granularity", "channel"],
     "applies to --granularity weight"),
    (["compare", "--allocations", "global", "--calibration", "8"], "apply with --reconstruct"),
])
def test_bad_reconstruction_options_are_one_line_errors(cli, dense, tmp_path, argv, expected):
    code, _, err = cli(*argv, "--checkpoint", dense, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2, err
    assert err.strip().startswith("error:") and "\n" not in err.strip() and expected in err
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "scan.json").exists()


def test_recurrent_gates_are_refused_or_fall_back_to_masks_alone_and_say_so(cli, tmp_path):
    code, _, _ = cli("train", "--model", "lstm", "--model-arg", "hidden=16", "--epochs", "1", "--out", tmp_path,
                     "--device", "cpu")
    assert code == 0
    checkpoint = tmp_path / "model.pt"
    gates = {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}
    code, _, err = cli("sweep", "--checkpoint", checkpoint, "--sparsities", "0.5", "--reconstruct", "mask",
                       "--out", tmp_path / "refused", "--device", "cpu")
    assert code == 2 and "cannot capture the inputs of lstm.weight_ih_l0: it is a recurrent gate matrix" in err
    assert "--reconstruct-fallback" in err and "\n" not in err.strip()

    fallback = ["--reconstruct", "obs", "--calibration", "200", "--reconstruct-fallback", "--device", "cpu"]
    code, out, _ = cli("sweep", "--checkpoint", checkpoint, "--sparsities", "0.5", "--out", tmp_path / "sweep",
                       *fallback)
    assert code == 0 and "lstm.weight_hh_l0: masks alone, not reconstructed" in " ".join(out.split())
    doc = json.loads((tmp_path / "sweep" / "result.json").read_text())
    assert set(doc["sweep"]["fallback"]) == gates and doc["settings"]["reconstruct_fallback"] is True
    code, _, _ = cli("compare", "--checkpoint", checkpoint, "--allocations", "uniform,global", "--sparsities", "0.5",
                     "--no-test", "--out", tmp_path / "compare", *fallback)
    assert code == 0
    assert set(json.loads((tmp_path / "compare" / "result.json").read_text())["comparison"]["fallback"]) == gates
    code, _, _ = cli("scan", "--checkpoint", checkpoint, "--strategy", "grid", "--out", tmp_path / "scan", *fallback)
    assert code == 0
    assert set(_scan(tmp_path / "scan")["curves"]["fallback"]) == gates

    allocation = tmp_path / "allocation.json"
    allocation.write_text(json.dumps({"lstm.weight_ih_l0": 0.5, "lstm.weight_hh_l0": 0.5, "fc.weight": 0.5}))
    code, _, _ = cli("prune", "--checkpoint", checkpoint, "--allocation", allocation, "--finetune-epochs", "0",
                     "--out", tmp_path / "pruned", *fallback)
    assert code == 0
    doc = json.loads((tmp_path / "pruned" / "result.json").read_text())
    assert set(doc["reconstruction"]["fallback"]) == gates
    assert [layer["name"] for layer in doc["reconstruction"]["layers"]] == ["fc.weight"]
    pruned = load_checkpoint(tmp_path / "pruned" / "model.pt").model
    for t in find_targets(pruned):
        weight = getattr(pruned.get_submodule(t.module), t.param).detach()
        assert int((weight == 0).sum()) == removed_count(0.5, t.numel), t.name
