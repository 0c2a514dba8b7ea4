"""Shared fixtures: tiny models and tensors built in the test, so that tests run in seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunescope.data.types import Dataset, Split

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# examples/ importable by name (tiny_hf:tokens), as the README runs them from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


class TinyNet(nn.Module):
    """Conv → LSTM-free MLP head; every kind of plain target in a few hundred weights."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class SequenceNet(nn.Module):
    """LSTM + self-attention over the rows of a (1, 4, 4) image: recurrent and attention targets."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(x.flatten(1, 2))
        attended, _ = self.attn(seq, seq, seq)
        return self.head(attended[:, -1])


def make_dataset(n_train: int = 240, n_val: int = 60, n_test: int = 60, num_classes: int = 3, seed: int = 0) -> Dataset:
    """Learnable synthetic images (1, 4, 4): class-dependent means plus noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, 1, 4, 4, generator=generator) * 2

    def split(n: int) -> Split:
        y = torch.arange(n) % num_classes
        x = centres[y] + torch.randn(n, 1, 4, 4, generator=generator)
        return Split(x, y)

    return Dataset(
        name="tiny", train=split(n_train), val=split(n_val), test=split(n_test), input_shape=(1, 4, 4),
        num_classes=num_classes, spec={"name": "tiny"},
    )


def fitted(data: Dataset, *, steps: int, lr: float) -> TinyNet:
    """A TinyNet (seed 0) fitted to ``data.train`` by ``steps`` full-batch Adam steps, in eval mode."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
        optimizer.step()
    return model.eval()


# Accuracies reached on different float paths (another batch size or batch, kernel, thread count, process) are
# counts of argmax decisions: rounding moves logits by ~1e-6 of their size, so only an example whose two highest
# logits are closer than that can change its prediction. NEAR_TIE is 100 times that: examples within it are the
# only ones such a comparison may disagree on (mostly none, and then the accuracies are equal exactly).
NEAR_TIE = 1e-4


def near_ties(logits: torch.Tensor, margin: float = NEAR_TIE) -> int:
    """How many rows of ``logits`` (N, C) have their two highest values within ``margin`` of each other,
    relative to the row's largest magnitude (at least 1)."""
    logits = logits.detach().float()
    top = logits.topk(2, dim=1).values
    return int(((top[:, 0] - top[:, 1]) <= margin * logits.abs().amax(1).clamp(min=1.0)).sum())


def assert_same_accuracy(value: float, reference: float, logits: torch.Tensor) -> None:
    """``value`` and ``reference`` are accuracies on the same examples computed on different float paths;
    ``logits`` are one path's logits of those examples. They may differ only by the near ties: exactly equal
    where there are none."""
    ties = near_ties(logits)
    assert abs(value - reference) * len(logits) <= ties + 1e-9, (value, reference, f"{ties} near ties")


def scan_near_ties(units, x: torch.Tensor, curves: dict) -> dict:
    """Near ties of ``units.model`` on the inputs ``x`` (every example a scan's subsets draw from): dense (key
    None) and pruned by ``units`` at every point of ``curves`` ({name: Curve}; key (name, sparsity))."""
    with torch.no_grad():
        ties = {None: near_ties(units.model.eval()(x))}
        for name, curve in curves.items():
            for point in curve.points:
                with units.applied({name: point.sparsity}) as model:
                    ties[name, point.sparsity] = near_ties(model(x))
    return ties


def assert_same_curves(got: dict, expected: dict, ties: dict) -> None:
    """Curves ({name: Curve}) of two scans of one model measured on different float paths (other processes,
    batch sizes): the same levels, each value equal up to the near ties ``ties`` (:func:`scan_near_ties`) of
    the model pruned there."""
    assert got.keys() == expected.keys()
    for name, curve in expected.items():
        ours, theirs = got[name].sorted_points(), curve.sorted_points()
        assert [p.sparsity for p in ours] == [p.sparsity for p in theirs], name
        for p, q in zip(ours, theirs, strict=True):
            assert p.n == q.n and abs(p.value - q.value) * p.n <= ties[name, p.sparsity] + 1e-9, (name, p, q)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run ``prunescope ARGV`` in process; return (exit code, stdout, stderr)."""
    from prunescope.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' tensors are tiny: one CPU thread is faster, and on a shared CPU far steadier, than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """``cli(*argv) -> (exit code, stdout, stderr)`` of the prunescope command."""
    return lambda *argv: run_cli(capsys, *argv)


@pytest.fixture
def tiny_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def sequence_model() -> SequenceNet:
    torch.manual_seed(0)
    return SequenceNet().eval()


@pytest.fixture
def tiny_data() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """The zoo MLP trained 3 epochs on digits through the CLI: its checkpoint."""
    from prunescope.cli import main

    out = tmp_path_factory.mktemp("dense")
    with pytest.raises(SystemExit) as done:
        main(["train", "--epochs", "3", "--out", str(out), "--device", "cpu"])
    assert (done.value.code or 0) == 0
    return out / "model.pt"
