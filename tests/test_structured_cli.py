"""scan → prune with --granularity channel from the command line: physically smaller models that reload and match."""

import json
import re

import pytest
import torch
from conftest import assert_same_curves, scan_near_ties

from prunescope.checkpoint import load_checkpoint
from prunescope.curves import Curves
from prunescope.data import load_dataset
from prunescope.measure import count_macs
from prunescope.models import build_from_spec, model_spec
from prunescope.structured.export import load_exported
from prunescope.structured.find import find_groups, rebuild
from prunescope.structured.groups import pruned_spec
from prunescope.units import find_units


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small BN conv net trained on digits for 2 epochs through the CLI."""
    from prunescope.cli import main

    out = tmp_path_factory.mktemp("cnn")
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "cnn", "--epochs", "2", "--out", str(out), "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return out / "model.pt"


@pytest.fixture(scope="module")
def channel_scan(cnn, tmp_path_factory):
    from prunescope.cli import main

    out = tmp_path_factory.mktemp("scan")
    argv = ["scan", "--checkpoint", str(cnn), "--out", str(out), "--granularity", "channel", "--importance", "l1",
            "--strategy", "grid", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert (done.value.code or 0) == 0
    return out, argv


def test_channel_scan_covers_every_group_and_reports_the_output_layer(cnn, channel_scan):
    out, _ = channel_scan
    curves = json.loads((out / "scan.json").read_text())["curves"]
    model = load_checkpoint(cnn).model
    groups = find_groups(model, (1, 8, 8))
    assert curves["granularity"] == "channel" and curves["criterion"] == "l1"
    assert set(curves["curves"]) == set(groups.groups)
    assert curves["skipped"] == {"fc2": "output layer: its channels are the model's outputs"}
    for name, curve in curves["curves"].items():
        assert curve["numel"] == groups.groups[name].width and curve["params"] == groups.groups[name].params
        assert len(curve["points"]) == 18  # sconce's grid, one evaluation per level


def test_channel_scan_resumes_without_evaluating(cli, channel_scan):
    _, argv = channel_scan
    code, out, _ = cli(*argv)
    assert code == 0
    evaluations, reused = re.search(r"(\d+) evaluations \((\d+) reused", out).groups()
    assert evaluations == reused  # nothing evaluated again


def test_prune_channels_round_to_export_and_reload(cli, cnn, tmp_path):
    allocation = tmp_path / "allocation.json"
    groups = find_groups(load_checkpoint(cnn).model, (1, 8, 8))
    allocation.write_text(json.dumps({"conv2.conv": 0.5, "conv3.conv": 0.4, "fc1": 0.7}))
    out, exported = tmp_path / "pruned", tmp_path / "pruned.pt2"
    code, _, err = cli("prune", "--checkpoint", cnn, "--allocation", allocation, "--granularity", "channel",
                       "--round-to", "8", "--finetune-epochs", "1", "--export", exported, "--out", out,
                       "--device", "cpu")
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    saved = load_checkpoint(out / "model.pt")
    # kept counts are multiples of 8: conv2 32 -> 16, conv3 64 -> 40 (38.4 rounds to 40), fc1 128 -> 40 (38.4 -> 40)
    assert saved.model.conv2.conv.out_channels == 16 and saved.model.conv3.conv.out_channels == 40
    assert saved.model.fc1.out_features == 40 and saved.model.conv1.conv.out_channels == 32
    assert {name: len(idxs) for name, idxs in result["removed_channels"].items()} == {
        "conv2.conv": 16, "conv3.conv": 24, "fc1": 88}
    assert result["footprint"]["pruned"]["macs"] == count_macs(saved.model, (1, 8, 8)).dense
    assert result["footprint"]["pruned"]["params"] == sum(p.numel() for p in saved.model.parameters())
    assert result["footprint"]["dense"]["macs"] == groups.footprint().macs
    # The export loads without the spec and computes what the checkpoint computes.
    data = load_dataset("digits")
    loaded = load_exported(exported, trusted=True)
    with torch.no_grad():
        assert torch.allclose(loaded.module(data.val.x), saved.model.eval()(data.val.x), atol=1e-5)
    assert loaded.metadata["pruned_spec"] == saved.model_spec
    assert result["export"]["max_logit_difference"] <= 1e-4


def test_pruned_spec_composes_and_rebuilds_the_architecture():
    spec = model_spec("resnet20", (1, 16, 16), 10)
    model = build_from_spec(spec)
    first = {"conv1": [0, 1, 2], "layer1.0.conv1": [5]}
    groups = find_groups(model, (1, 16, 16))
    spec1 = pruned_spec(spec, groups, first)
    groups.prune(first)
    second = {"conv1": [0], "layer2.0.conv1": [3, 4]}  # indices of the already pruned model
    groups = find_groups(model, (1, 16, 16))
    spec2 = pruned_spec(spec1, groups, second)
    groups.prune(second)
    assert spec2["removed_channels"] == {"conv1": [0, 1, 2, 3], "layer1.0.conv1": [5], "layer2.0.conv1": [3, 4]}
    rebuilt = rebuild(spec2)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--round-to", "64"], "exceeds the width of group 'conv2.conv' (32 channels)"),
        (["--importance", "nope"], "--importance 'nope' does not rank channels"),
    ],
)
def test_prune_channels_bad_input_is_one_line(cli, cnn, tmp_path, argv, expected):
    allocation = tmp_path / "allocation.json"
    allocation.write_text(json.dumps({"conv2.conv": 0.5}))
    code, _, err = cli("prune", "--checkpoint", cnn, "--allocation", allocation, "--granularity", "channel",
                       "--finetune-epochs", "0", "--out", tmp_path / "out", "--device", "cpu", *argv)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_unknown_group_in_allocation_is_one_line(cli, cnn, tmp_path):
    allocation = tmp_path / "allocation.json"
    allocation.write_text(json.dumps({"conv9": 0.5}))
    code, _, err = cli("prune", "--checkpoint", cnn, "--allocation", allocation, "--granularity", "channel",
                       "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "unknown targets conv9" in err and len(err.strip().splitlines()) == 1


def test_channel_scan_with_two_workers_measures_what_one_process_does(cnn, channel_scan, tmp_path):
    """Workers rebuild the groups from the pickled model: same points as the single-process scan."""
    from prunescope.scan import scan

    saved, data = load_checkpoint(cnn), load_dataset("digits")
    curves = scan(saved.model, data, criterion="l1", granularity="channel", strategy="grid", device="cpu",
                  storage=tmp_path / "study.journal", workers=2)
    single = Curves.from_dict(json.loads((channel_scan[0] / "scan.json").read_text())["curves"])
    # Other processes, each measuring its own batch size: the same values up to an example near a tie (see
    # conftest.near_ties; mostly none, and then exactly).
    ties = scan_near_ties(find_units(saved.model, data, "channel", "l1"), data.val.x, single.curves)
    assert_same_curves(curves.curves, single.curves, ties)


def test_recalibrate_bn_reestimates_the_statistics_of_the_pruned_model(cli, cnn, tmp_path):
    allocation = tmp_path / "allocation.json"
    allocation.write_text(json.dumps({"conv2.conv": 0.5, "conv3.conv": 0.5}))
    saved = {}
    for batches in (0, 5):
        out = tmp_path / f"bn{batches}"
        code, _, err = cli("prune", "--checkpoint", cnn, "--allocation", allocation, "--granularity", "channel",
                           "--finetune-epochs", "0", "--recalibrate-bn", batches, "--out", out, "--device", "cpu")
        assert code == 0, err
        saved[batches] = load_checkpoint(out / "model.pt")
        assert json.loads((out / "result.json").read_text())["settings"]["recalibrate_bn"] == batches
    stale, fresh = saved[0].model.conv3.bn, saved[5].model.conv3.bn  # after the pruned conv2: its inputs changed
    assert torch.equal(saved[0].model.conv3.conv.weight, saved[5].model.conv3.conv.weight)
    assert not torch.allclose(stale.running_var, fresh.running_var)


def test_compare_channel_mode_from_a_channel_scan(cli, cnn, channel_scan, tmp_path):
    channel_scan, _ = channel_scan
    code, out, err = cli("compare", "--checkpoint", cnn, "--granularity", "channel", "--scan", channel_scan,
                         "--sparsities", "0.3,0.5", "--out", tmp_path / "c", "--device", "cpu")
    assert code == 0, err
    assert "MACs removed" in out and "channel-global" in out
    doc = json.loads((tmp_path / "c" / "result.json").read_text())["comparison"]
    assert doc["granularity"] == "channel" and {r["method"] for r in doc["rows"]} == {
        "budget", "channel-uniform", "channel-global"}
    dense = doc["rows"][0]["details"]["footprint"]["macs"] / (1 - doc["rows"][0]["achieved"])
    for row in doc["rows"]:
        assert row["error"] is None and row["details"]["footprint"]["macs"] <= (1 - row["sparsity"]) * dense + 1
    code, _, err = cli("compare", "--checkpoint", cnn, "--scan", channel_scan, "--allocations", "ours",
                       "--sparsities", "0.5", "--out", tmp_path / "w", "--device", "cpu")
    assert code == 2 and "measured channels: compare with --granularity channel" in err
