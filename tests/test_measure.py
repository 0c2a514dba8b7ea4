"""Hand-checked counts for prunescope.measure; latency only for sanity (no wall-clock thresholds)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prunescope.errors import UsageError
from prunescope.measure import (
    ParamCounts,
    count_macs,
    count_parameters,
    effective_parameters,
    measure_all,
    measure_latency,
    model_bytes,
)


class SelfAttention(nn.Module):
    """Self-attention over (N, L, E) inputs, the way models usually call MultiheadAttention."""

    def __init__(self, embed: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class CrossAttention(nn.Module):
    """Queries from the input (N, 6, 8) attend to a fixed memory of 3 positions with 4 features."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
        self.register_buffer("memory", torch.randn(1, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(query=x, key=self.memory, value=self.memory)[0]


class Twice(nn.Module):
    """One Linear applied twice: its MACs count per call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


def half_zeroed(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        layer.weight.view(-1)[: layer.weight.numel() // 2] = 0
    return layer


# --- MACs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "input_shape", "expected"),
    [
        (nn.Sequential(nn.Linear(10, 5)), (10,), 50),
        (nn.Sequential(nn.Linear(10, 5)), (4, 10), 4 * 50),
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), (3, 6, 6), 8 * 3 * 3 * 3 * 36),
        (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), (4, 5, 5), 8 * 2 * 3 * 3 * 9),
        (nn.Sequential(nn.ConvTranspose1d(2, 3, 3)), (2, 5), 2 * 3 * 3 * 5),
        (nn.Sequential(nn.LSTM(7, 5, batch_first=True)), (9, 7), (4 * 5 * 7 + 4 * 5 * 5) * 9),
        (nn.Sequential(nn.GRU(7, 5, num_layers=2, bidirectional=True)), (9, 7), None),
        (Twice(), (10,), 2 * 100),
    ],
    ids=["linear", "linear-positions", "conv", "conv-groups", "conv-transposed", "lstm", "gru-2x2", "reused"],
)
def test_dense_macs_are_hand_counts(model: nn.Module, input_shape: tuple[int, ...], expected: int | None) -> None:
    if expected is None:  # GRU: 3 gates, 2 layers x 2 directions; layer 2 reads both directions (10 features)
        expected = 2 * (3 * 5 * 7 + 3 * 5 * 5) * 9 + 2 * (3 * 5 * 10 + 3 * 5 * 5) * 9
    macs = count_macs(model, input_shape)
    assert macs.dense == expected
    assert macs.effective == expected  # freshly initialised weights have no zeros
    assert sum(dense for dense, _ in macs.per_weight.values()) == expected


def test_lstm_macs_per_weight() -> None:
    macs = count_macs(nn.Sequential(nn.LSTM(7, 5, batch_first=True)), (9, 7))
    assert macs.per_weight == {"0.weight_ih_l0": (4 * 5 * 7 * 9,) * 2, "0.weight_hh_l0": (4 * 5 * 5 * 9,) * 2}


def test_self_attention_counts_projections_attention_and_out_proj_once() -> None:
    macs = count_macs(SelfAttention(embed=8, heads=2), (6, 8))
    assert macs.per_weight == {
        "attn.in_proj_weight": (3 * 8 * 8 * 6,) * 2,
        "attn.out_proj.weight": (8 * 8 * 6,) * 2,
        "attn.attention": (2 * 6 * 6 * 8,) * 2,  # QK^T and AV
    }
    assert macs.dense == 3 * 8 * 8 * 6 + 8 * 8 * 6 + 2 * 6 * 6 * 8


def test_cross_attention_with_separate_projections() -> None:
    macs = count_macs(CrossAttention(), (6, 8))
    assert {key: dense for key, (dense, _) in macs.per_weight.items()} == {
        "attn.q_proj_weight": 8 * 8 * 6,
        "attn.k_proj_weight": 8 * 4 * 3,
        "attn.v_proj_weight": 8 * 4 * 3,
        "attn.out_proj.weight": 8 * 8 * 6,
        "attn.attention": 2 * 6 * 3 * 8,
    }


def test_transformer_layer_submodules_are_counted() -> None:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    macs = count_macs(layer, (6, 8))
    attention = 3 * 8 * 8 * 6 + 8 * 8 * 6 + 2 * 6 * 6 * 8
    assert macs.dense == attention + 2 * 8 * 16 * 6
    assert torch.backends.mha.get_fastpath_enabled()  # global switch restored


@pytest.mark.parametrize(
    ("layer", "input_shape"),
    [(nn.Linear(10, 6), (10,)), (nn.Conv2d(3, 8, 3, padding=1), (3, 6, 6))],
    ids=["linear", "conv"],
)
def test_effective_macs_halve_when_half_the_weights_are_zero(layer: nn.Module, input_shape: tuple[int, ...]) -> None:
    macs = count_macs(nn.Sequential(half_zeroed(layer)), input_shape)
    assert macs.effective * 2 == macs.dense
    assert macs.per_weight["0.weight"] == (macs.dense, macs.dense // 2)


def test_batchnorm_is_not_counted_and_model_state_is_restored() -> None:
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    model.train()
    model[1].eval()
    macs = count_macs(model, (10,))
    assert macs.per_weight == {"0.weight": (50, 50)}
    assert model.training and model[0].training and not model[1].training
    assert not model[0]._forward_hooks


class Functional(nn.Module):
    """Multiplies by weights without calling a layer's forward: a functional call and a bare Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 6)
        self.proj = nn.Parameter(torch.randn(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.fc.weight) @ self.proj


def test_weights_used_without_their_layers_forward_are_counted() -> None:
    macs = count_macs(Functional(), (10,))
    assert macs.per_weight == {"fc.weight": (60, 60), "proj": (24, 24)}


def test_masked_attention_counts_like_its_baked_copy() -> None:
    from prunescope.masks import apply_permanently, make_permanent
    from prunescope.targets import find_targets

    model = SelfAttention(embed=8, heads=2)
    targets = find_targets(model)
    masks = {t.name: (torch.rand(t.shape) > 0.5).float() for t in targets}
    apply_permanently(model, targets, masks)
    masked = count_macs(model, (6, 8))
    make_permanent(model)
    assert masked == count_macs(model, (6, 8))
    in_proj = masked.per_weight["attn.in_proj_weight"]
    assert in_proj[1] == int(masks["attn.in_proj_weight"].sum()) * 6 < in_proj[0]


# --- parameters and bytes ---------------------------------------------------------------


def test_parameter_counts_with_known_zeros() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight.fill_(1.0).view(-1)[:5] = 0  # 5 of 12 zero
        model[0].bias.zero_()  # 3 zero; BatchNorm: weight 3 ones, bias 3 zeros
    counts = count_parameters(model)
    assert counts.total == 12 + 3 + 3 + 3  # running stats are buffers, not parameters
    assert counts.nonzero == 7 + 3


def test_pruned_weight_is_counted_once_through_its_mask() -> None:
    model = nn.Sequential(nn.Linear(10, 5))
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    assert [name for name, _ in effective_parameters(model)] == ["0.bias", "0.weight"]
    assert count_parameters(model) == ParamCounts(total=55, nonzero=25 + 5)
    assert count_macs(model, (10,)).per_weight["0.weight"] == (50, 25)
    # A mask changed after pruning counts at once, though module.weight is refreshed only on forward.
    model[0].weight_mask.zero_()
    assert count_parameters(model).nonzero == 5


def test_sparse_bytes_formula() -> None:
    model = nn.Sequential(nn.Linear(10, 5))
    with torch.no_grad():
        model[0].weight.zero_().view(-1)[:10] = 1.0  # 10 of 50 nonzero
        model[0].bias.fill_(1.0)
    size = model_bytes(model)
    assert size.dense == (50 + 5) * 4
    # weight: 10 values * 4 bytes + ceil(50 / 8) bitmask bytes = 47 < 200;
    # bias: 5 * 4 + 1 = 21 > 20 dense bytes, so it stays dense.
    assert size.sparse == 47 + 20


# --- latency ----------------------------------------------------------------------------


def test_latency_is_sane_and_restores_training() -> None:
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 5))
    model.train()
    latency = measure_latency(model, (10,), batch_size=4, warmup=1, repeats=7)
    assert latency.batch_size == 4
    assert 0 < latency.p10_ms <= latency.median_ms <= latency.p90_ms
    assert latency.throughput == pytest.approx(4 / (latency.median_ms / 1000))
    assert all(module.training for module in model.modules())


def test_measure_all_is_json_able() -> None:
    model = nn.Sequential(nn.Linear(10, 5))
    result = measure_all(model, (10,), batch_sizes=(1, 3), repeats=2)
    assert json.loads(json.dumps(result)) == result
    assert {k: v for k, v in result.items() if k != "latency"} == {
        "params_total": 55,
        "params_nonzero": 55,
        "bytes_dense": 220,
        "bytes_sparse": 220,
        "macs_dense": 50,
        "macs_effective": 50,
    }
    assert sorted(result["latency"]) == ["1", "3"]
    assert result["latency"]["3"]["batch_size"] == 3


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"repeats": 0}, {"warmup": -1}, {"device": "no-such-device"}],
    ids=["batch_size", "repeats", "warmup", "device"],
)
def test_bad_latency_arguments(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        measure_latency(nn.Linear(10, 5), (10,), **kwargs)


@pytest.mark.parametrize("input_shape", [(0,), (7,)], ids=["zero-dim", "wrong-features"])
def test_bad_input_shape(input_shape: tuple[int, ...]) -> None:
    model = nn.Sequential(nn.Linear(10, 5))
    with pytest.raises(UsageError, match="input shape"):
        count_macs(model, input_shape)
    with pytest.raises(UsageError, match="input shape"):
        measure_latency(model, input_shape, repeats=1)


def test_measure_all_needs_a_batch_size() -> None:
    with pytest.raises(UsageError):
        measure_all(nn.Linear(10, 5), (10,), batch_sizes=())


def test_auto_device_is_accepted():
    from prunescope.measure import measure_latency

    assert measure_latency(torch.nn.Linear(4, 2), (4,), device="auto", repeats=2).median_ms > 0


def test_fastest_batch_size_takes_the_best_measured_throughput_among_usable_candidates(monkeypatch):
    from prunescope.measure import timing as measure

    rates = {32: 100.0, 64: 900.0, 128: 500.0, 256: 2000.0}
    monkeypatch.setattr(measure, "_FASTEST", {})
    monkeypatch.setattr(measure, "measure_latency", lambda *a, batch_size, **k: measure.Latency(
        batch_size=batch_size, median_ms=1.0, p10_ms=1.0, p90_ms=1.0, throughput=rates[batch_size]))
    model = torch.nn.Linear(4, 2)
    assert measure.fastest_batch_size(model, (4,), candidates=(32, 64, 128, 256)) == 256
    assert measure.fastest_batch_size(model, (4,), candidates=(32, 64, 128, 256), most=200) == 64
    assert measure.fastest_batch_size(model, (4,), candidates=(32, 64), most=10) == 32  # fewer examples than any


def test_fastest_batch_size_prefers_the_larger_of_two_equally_fast_and_takes_medians_over_rounds(monkeypatch):
    from prunescope.measure import timing as measure

    calls: dict[int, int] = {}
    # 64 is measured fast once by chance (a quiet moment), 256 steadily; 512 within 10% of 256.
    series = {64: [5000.0, 900.0, 950.0], 256: [2000.0, 2050.0, 1990.0], 512: [1900.0, 1950.0, 1880.0]}

    def latency(*_args, batch_size, **_kwargs):
        calls[batch_size] = calls.get(batch_size, 0) + 1
        rate = series[batch_size][calls[batch_size] - 1]
        return measure.Latency(batch_size=batch_size, median_ms=1.0, p10_ms=1.0, p90_ms=1.0, throughput=rate)

    monkeypatch.setattr(measure, "measure_latency", latency)
    monkeypatch.setattr(measure, "_FASTEST", {})
    assert measure.fastest_batch_size(torch.nn.Linear(4, 2), (4,), candidates=(64, 256, 512)) == 512
    assert calls == {64: 3, 256: 3, 512: 3}  # interleaved rounds, every candidate alike
    # Another model of the same architecture (another seed) reuses the measurement.
    assert measure.fastest_batch_size(torch.nn.Linear(4, 2), (4,), candidates=(64, 256, 512)) == 512
    assert calls == {64: 3, 256: 3, 512: 3}
