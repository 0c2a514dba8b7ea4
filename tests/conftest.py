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
