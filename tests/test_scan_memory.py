"""Memory of a scan: beyond the criterion's scores, at most one extra copy of the prunable weights.

Measured by counting the bytes of every CPU tensor storage alive at the start of each
evaluation's forward pass that was not alive before the scan (activations of a batch of 16
are negligible next to the 1.6 MB of weights of this MLP).
"""

from __future__ import annotations

import gc
import warnings

import torch

from prunescope.data.types import Dataset, Split
from prunescope.models import MLP
from prunescope.scan import scan
from prunescope.targets import find_targets


def live_storages() -> dict[int, int]:
    """``{address: bytes}`` of every CPU tensor storage reachable by the garbage collector."""
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance touches deprecated torch attributes of some objects
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
                try:
                    storage = obj.untyped_storage()
                    found[storage.data_ptr()] = storage.nbytes()
                except RuntimeError:  # a fake tensor left by another test's tracing: no memory behind it
                    continue
    return found


def test_a_scan_holds_its_scores_and_at_most_one_copy_of_the_prunable_weights():
    torch.manual_seed(0)
    model = MLP((1, 16, 16), 10, hidden=(512, 512)).eval()
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 10
    data = Dataset(name="m", train=Split(x, y), val=Split(x, y), test=Split(x, y), input_shape=(1, 16, 16),
                   num_classes=10, spec={"name": "m"})
    weights = sum(t.numel * 4 for t in find_targets(model))  # float32 prunable weights, bytes
    before = live_storages()
    extra: list[int] = []
    model.register_forward_pre_hook(
        lambda *_: extra.append(sum(size for at, size in live_storages().items() if at not in before))
    )
    curves = scan(model, data, strategy="grid", levels=(0.5, 0.9), device="cpu")
    assert len(extra) >= curves.evaluations
    scores = weights  # magnitude scores: one float32 per prunable weight, held for the whole scan
    assert max(extra) - scores <= weights
