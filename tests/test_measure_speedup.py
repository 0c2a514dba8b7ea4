"""measure_speedup times the model and its dense reference side by side, in alternating rounds."""

import pytest
from torch import nn

from prunescope.errors import UsageError
from prunescope.measure import measure_speedup


def _recording(log: list[str], label: str, width: int) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 3))
    model.register_forward_pre_hook(lambda *_: log.append(label))
    return model


def test_model_and_reference_alternate_in_rounds():
    log: list[str] = []
    small, dense = _recording(log, "small", 4), _recording(log, "dense", 32)
    result = measure_speedup(small, dense, (1, 4, 4), batch_sizes=(1, 8), repeats=6, rounds=3)
    runs = [label for i, label in enumerate(log) if i == 0 or label != log[i - 1]]  # consecutive passes as one run
    # per batch size: small, dense, small, dense, small, dense (each run of passes is one chunk)
    assert runs[:12] == ["small", "dense"] * 6  # then one pass each to count MACs
    assert set(result["speedup"]) == set(result["speedup_range"]) == {"1", "8"}
    assert result["mac_reduction"] == pytest.approx((16 * 32 + 32 * 3) / (16 * 4 + 4 * 3))
    for batch, (low, high) in result["speedup_range"].items():
        assert 0 < low <= high and result["speedup"][batch] > 0


def test_no_reference_and_bad_rounds():
    model = _recording([], "m", 4)
    result = measure_speedup(model, None, (1, 4, 4), batch_sizes=(2,), repeats=2)
    assert result["speedup"] is None and result["speedup_range"] is None and result["model"]["macs"] == 16 * 4 + 4 * 3
    with pytest.raises(UsageError, match="rounds"):
        measure_speedup(model, None, (1, 4, 4), rounds=0)
