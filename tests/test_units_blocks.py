"""Block units (``--units block``): one sparsity per block of a transformer, spread exactly over its matrices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_hf
import torch

from prunescope.blocks import block_units, spread
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError
from prunescope.masks import removed_count
from prunescope.models import build_model
from prunescope.pick.budget import BudgetPicker
from prunescope.pick.choose import choose
from prunescope.pipeline.compare import compare
from prunescope.scan import scan
from prunescope.targets import chosen_targets, find_targets
from prunescope.units import find_units

VOCAB, LENGTH = 30, 8


def token_data(seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randint(0, VOCAB, (n, LENGTH), generator=generator),
                     torch.randint(0, VOCAB, (n, LENGTH), generator=generator))

    return Dataset("tokens", split(32), split(16), split(16), (LENGTH,), VOCAB)


@pytest.fixture
def gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gpt", (LENGTH,), VOCAB, width=16, layers=3, heads=2).eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> torch.nn.Module:
    pytest.importorskip("transformers")
    config = tiny_hf.llama_config(vocab_size=VOCAB, num_hidden_layers=3, architectures=["LlamaForCausalLM"])
    directory = tmp_path_factory.mktemp("llama")
    config.save_pretrained(directory)
    torch.manual_seed(0)
    return build_model(f"hf:{directory}", (LENGTH,), VOCAB).eval()


def zeros(model: torch.nn.Module) -> dict[str, int]:
    return {t.name: int((getattr(model.get_submodule(t.module), t.param) == 0).sum()) for t in find_targets(model)}


def test_a_block_unit_covers_exactly_its_blocks_matrices(gpt, llama):
    data = token_data()
    for model, prefix, per_block in ((gpt, "blocks", 4), (llama, "model.layers", 7)):
        units = find_units(model, data, "weight", "magnitude", units="block")
        chosen, _ = chosen_targets(model, VOCAB)  # a language model: embeddings and the output layer left dense
        assert [u.name for u in units.units] == [f"{prefix}.{i}" for i in range(3)]
        for unit in units.units:
            inside = [t for t in chosen if t.module.startswith(unit.name + ".")]
            assert len(inside) == per_block and units.members[unit.name] == [t.name for t in inside]
            assert unit.size == unit.params == sum(t.numel for t in inside)
        assert sorted(t for m in units.members.values() for t in m) == sorted(t.name for t in chosen)
    # Asked for, the output layer (outside every block) is a unit of its own, named as the tensor.
    with_head = find_units(gpt, data, "weight", "magnitude", units="block", include=["blocks.*", "head"])
    assert with_head.members["head.weight"] == ["head.weight"]


def test_a_block_allocation_removes_each_blocks_count_exactly_spread_by_count(gpt):
    units = find_units(gpt, token_data(), "weight", "magnitude", units="block")
    allocation = {"blocks.0": 0.37, "blocks.2": 0.813}
    before = {name: p.detach().clone() for name, p in gpt.named_parameters()}
    with units.applied(allocation):
        removed = zeros(gpt)
    for unit in units.units:
        wanted = removed_count(allocation.get(unit.name, 0.0), unit.size)
        assert sum(removed[t] for t in units.members[unit.name]) == wanted
        for t in units.members[unit.name]:  # each matrix at the block's sparsity, up to one weight
            numel = next(x.numel for x in units.targets if x.name == t)
            assert abs(removed[t] - allocation.get(unit.name, 0.0) * numel) < 1
    assert all(torch.equal(p, before[name]) for name, p in gpt.named_parameters())  # restored bit-exactly
    assert units.footprint(allocation).params == sum(p.numel() for p in gpt.parameters()) - sum(
        removed_count(allocation.get(u.name, 0.0), u.size) for u in units.units)


def test_spread_keeps_a_matrix_from_being_emptied_and_refuses_unknown_blocks(gpt):
    grouped = block_units(chosen_targets(gpt, VOCAB)[0])
    members = grouped["blocks.1"]
    size = sum(t.numel for t in members)
    per_target = spread({"blocks.1": 1 - len(members) / size}, grouped)  # all but one weight per matrix
    assert [t.numel - removed_count(per_target[t.name], t.numel) for t in members] == [1] * len(members)
    with pytest.raises(UsageError, match=r"unknown block 'blocks\.9'"):
        spread({"blocks.9": 0.5}, grouped)


@pytest.mark.parametrize("which", ["gpt", "llama"])
def test_a_block_scan_has_one_curve_per_block(which, gpt, llama):
    model = gpt if which == "gpt" else llama
    curves = scan(model, token_data(), criterion="magnitude", strategy="grid", levels=[0.5, 0.9], units="block",
                  device="cpu")
    assert curves.units == "block" and list(curves.curves) == list(curves.members) and len(curves.curves) == 3
    assert all([p.sparsity for p in c.sorted_points()] == [0.5, 0.9] for c in curves.curves.values())
    units = find_units(model, token_data(), "weight", "magnitude", units="block")
    assert {name: c.numel for name, c in curves.curves.items()} == {u.name: u.size for u in units.units}
    assert curves.members == units.members
    again = type(curves).from_dict(json.loads(json.dumps(curves.to_dict())))
    assert again.units == "block" and again.members == curves.members


def test_block_picks_and_ours_meet_the_global_count_exactly(gpt):
    data = token_data()
    curves = scan(gpt, data, criterion="magnitude", strategy="grid", levels=[0.3, 0.6, 0.9], units="block",
                  device="cpu")
    choice = choose(curves, BudgetPicker(target_sparsity=0.5), gpt, data, device="cpu")
    written = choice.to_dict()
    assert written["units"] == "block" and set(written["unit_allocation"]) == set(curves.curves)
    members = chosen_targets(gpt, VOCAB)[0]
    total = sum(t.numel for t in members)
    removed = sum(removed_count(written["allocation"][t.name], t.numel) for t in members)
    assert removed == removed_count(0.5, total)  # the pick file's per-matrix allocation, exact
    for block, level in written["unit_allocation"].items():
        inside = [t for t in members if t.name in curves.members[block]]
        assert sum(removed_count(written["allocation"][t.name], t.numel) for t in inside) == removed_count(
            level, sum(t.numel for t in inside))
    comparison = compare(gpt, data, [0.5, 0.7], ["ours", "uniform", "global", "erk", "lamp", "owl", "alpha"],
                         curves=curves, device="cpu", test=False)
    assert comparison.units == "block"
    for row in comparison.rows:
        assert row.error is None and row.removed == removed_count(row.sparsity, total), row
        assert set(row.allocation) <= {t.name for t in members}  # every row per matrix
    ours = [r for r in comparison.rows if r.method == "ours"]
    assert all(set(r.details["budget_blocks"]) == set(curves.curves) for r in ours)


def test_block_units_are_refused_where_there_are_no_blocks_or_for_channels():
    model = build_model("mlp", (8,), 3, hidden=[16, 16])
    data = Dataset("t", Split(torch.randn(20, 8), torch.randint(0, 3, (20,))),
                   Split(torch.randn(10, 8), torch.randint(0, 3, (10,))),
                   Split(torch.randn(10, 8), torch.randint(0, 3, (10,))), (8,), 3)
    with pytest.raises(UsageError, match="no block of this model holds more than one prunable matrix"):
        find_units(model, data, "weight", "magnitude", units="block")
    with pytest.raises(UsageError, match="applies to --granularity weight"):
        find_units(model, data, "channel", "l2", units="block")
    with pytest.raises(UsageError, match="unknown --units 'layer'"):
        find_units(model, data, "weight", "magnitude", units="layer")


@pytest.fixture(scope="module")
def trained_gpt(tmp_path_factory) -> Path:
    """A gpt trained briefly on the standard library's own sources (bytes, blocks of 16): a checkpoint."""
    from prunescope.cli import main

    out = tmp_path_factory.mktemp("gpt") / "dense"
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "gpt", "--model-arg", "width=16", "--model-arg", "layers=2", "--model-arg",
              "heads=2", "--data", "python-source", "--data-arg", "max_documents=6", "--data-arg", "block=16",
              "--limit-train", "64", "--limit-val", "16", "--epochs", "1", "--optimizer", "adamw", "--out", str(out)])
    assert not done.value.code
    return out / "model.pt"


def test_block_units_through_scan_pick_compare_and_prune(cli, trained_gpt, tmp_path):
    common = ["--limit-val", "16", "--device", "cpu"]
    code, out, err = cli("scan", "--checkpoint", trained_gpt, "--units", "block", "--strategy", "grid",
                         "--out", tmp_path / "scan", *common)
    assert code == 0, err
    assert "units: 2 blocks, one sparsity each spread over its matrices by count (--units block)" in out
    document = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert document["curves"]["units"] == "block" and list(document["curves"]["curves"]) == ["blocks.0", "blocks.1"]
    code, out, err = cli("pick", "--scan", tmp_path / "scan", "--picker", "budget", "--target-sparsity", "0.6",
                         *common)
    assert code == 0, err
    assert "units: 2 blocks" in out
    pick = json.loads((tmp_path / "scan" / "pick.json").read_text())
    assert pick["units"] == "block" and set(pick["unit_allocation"]) == {"blocks.0", "blocks.1"}
    code, out, err = cli("prune", "--checkpoint", trained_gpt, "--allocation", tmp_path / "scan" / "pick.json",
                         "--finetune-epochs", "0", "--out", tmp_path / "pruned", *common)
    assert code == 0, err
    from prunescope.checkpoint import load_checkpoint

    model = load_checkpoint(tmp_path / "pruned" / "model.pt").model
    removed = zeros(model)
    for block, level in pick["unit_allocation"].items():
        members = document["curves"]["members"][block]
        size = sum(t.numel for t in find_targets(model) if t.name in members)
        assert sum(removed[t] for t in members) == removed_count(level, size)
    code, out, err = cli("compare", "--checkpoint", trained_gpt, "--scan", tmp_path / "scan", "--sparsities", "0.6",
                         "--allocations", "ours,uniform", "--out", tmp_path / "compare", "--no-test", *common)
    assert code == 0, err
    assert "units: 2 blocks" in out
    assert json.loads((tmp_path / "compare" / "result.json").read_text())["comparison"]["units"] == "block"
    code, _, err = cli("compare", "--checkpoint", trained_gpt, "--scan", tmp_path / "scan", "--units", "matrix",
                       "--sparsities", "0.6", "--out", tmp_path / "compare2", *common)
    assert code == 2 and "has one curve per block, not per matrix" in err
    code, out, err = cli("prune", "--checkpoint", trained_gpt, "--pattern", "2:4", "--reconstruct", "obs",
                         "--calibration", "16", "--finetune-epochs", "0", "--out", tmp_path / "rebuilt", *common)
    assert code == 0, err
    line = "reconstruction block by block over 2 blocks (blocks.0 … blocks.1): one block's inputs in memory at a time"
    assert line in out
    result = json.loads((tmp_path / "rebuilt" / "result.json").read_text())
    assert result["settings"]["reconstruct_plan"] == line and result["reconstruction"]["plan"] == line
    assert result["reconstruction"]["block_inputs_peak_bytes"] == 2 * 16 * 16 * 16 * 4  # 16 sequences of 16, width 16


def test_block_units_under_reconstruction_keep_each_blocks_count(gpt):
    from prunescope.reconstruct import reconstructing

    data = token_data()
    units = find_units(gpt, data, "weight", "magnitude", units="block")
    with units.applied({"blocks.1": 0.6}):
        masked_only = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    pruning = reconstructing(units, data.train, "mask", 16)
    with pruning.applied({"blocks.1": 0.6}):
        removed = zeros(gpt)
        refitted = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    block = units.members["blocks.1"]
    size = next(u.size for u in units.units if u.name == "blocks.1")
    assert sum(removed[t] for t in block) == removed_count(0.6, size)
    assert all(removed[t] == 0 for t in removed if t not in block)
    assert not torch.equal(refitted["blocks.1.fc.weight"], masked_only["blocks.1.fc.weight"])  # re-fitted
    assert pruning.inner.last.plan.startswith("reconstruction block by block over 3 blocks")
