"""Models and datasets that a user might bring, none of them from the zoo.

Imported by name (``own_models:attention``) by the tests of the plug-in contract; pytest
puts this folder on ``sys.path``. Everything is tiny so that a whole workflow on one model
takes seconds.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

# --------------------------------------------------------------------------- models


class Attention(nn.Module):
    """Rows of an (1, 8, 8) image as 8 tokens → MultiheadAttention → mean → hidden → head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(input_shape[-1], dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Linear(dim, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1, -2))
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.head(torch.relu(self.hidden(self.norm(tokens + attended).mean(1))))


class Encoder(nn.Module):
    """Rows as tokens through one nn.TransformerEncoderLayer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(input_shape[-1], 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.flatten(1, -2))).mean(1))


class RowGRU(nn.Module):
    """A GRU reading an image row by row; its last output feeds the head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(input_shape[-1], hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.flatten(1, -2))
        return self.head(out[:, -1])


class RowLSTM(nn.Module):
    """A two-layer LSTM over image rows (flat weights of both layers are targets)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_shape[-1], 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(1, -2))
        return self.head(out[:, -1])


class SeparableBlock(nn.Module):
    """Depthwise 3x3 → pointwise 1x1, BN, ReLU; (N, C, H, W) → (N, C_out, H, W)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.pointwise(self.depthwise(x))))


class SeparableNet(nn.Module):
    """Stem conv, a depthwise-separable block with a residual add, a second branch concatenated, head.

    ``groups`` > 1 makes the last conv a grouped one (which channel pruning refuses).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(input_shape[0], 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.block = SeparableBlock(8, 8)
        self.branch = nn.Conv2d(8, 4, 1, bias=False)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=groups, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = x + self.block(x)
        x = torch.cat([x, self.branch(x)], dim=1)
        return self.head(self.pool(torch.relu(self.grouped(x))).flatten(1))


class Bag(nn.Module):
    """Token ids (float-coded integers, any shape) → Embedding → mean → head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, vocab: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.hidden = nn.Linear(8, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        words = self.embedding(x.long().flatten(1)).mean(1)
        return self.head(torch.relu(self.hidden(words)))


class Tabular(nn.Module):
    """An MLP on a flat feature vector (N, F)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.out = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))


def attention(input_shape, num_classes, dim=16):
    return Attention(input_shape, num_classes, dim)


def encoder(input_shape, num_classes):
    return Encoder(input_shape, num_classes)


def gru(input_shape, num_classes, hidden=16):
    return RowGRU(input_shape, num_classes, hidden)


def lstm(input_shape, num_classes):
    return RowLSTM(input_shape, num_classes)


def separable(input_shape, num_classes, groups=1):
    return SeparableNet(input_shape, num_classes, groups)


def bag(input_shape, num_classes, vocab=32):
    return Bag(input_shape, num_classes, vocab)


def tabular(input_shape, num_classes):
    return Tabular(input_shape, num_classes)


def other_names(in_channels: int, n_classes: int, width: int = 8) -> nn.Module:
    """A factory spelt the way many code bases spell it: channels and classes, no shape."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(width * 4, n_classes),
    )


class BatchBound(nn.Module):
    """Adds a positional table sliced by the batch size: torch.export cannot make its batch dynamic."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(input_shape[-1], 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)
        self.register_buffer("table", torch.zeros(1024, input_shape[-2], 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1, -2)) + self.table[: x.shape[0]]
        return self.head(torch.relu(self.hidden(tokens.mean(1))))


def batch_bound(input_shape, num_classes):
    return BatchBound(input_shape, num_classes)


def raises(input_shape, num_classes):
    raise RuntimeError("out of cheese")


def not_a_module(input_shape, num_classes):
    return "a string"


# --------------------------------------------------------------------------- data


def _images(n: int, seed: int, classes: int = 3, shape=(1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: a class-dependent mean plus noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, *shape, generator=torch.Generator().manual_seed(99)) * 1.5
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, *shape, generator=generator), y


def images(n_train: int = 120, n_test: int = 60):
    """(train, test) as (x, y) tensor pairs, x (N, 1, 8, 8)."""
    return _images(n_train, 0), _images(n_test, 1)


def tensor_datasets(n_train: int = 120, n_test: int = 60):
    """(train, test) as TensorDatasets."""
    return TensorDataset(*_images(n_train, 0)), TensorDataset(*_images(n_test, 1))


class _Rows(TorchDataset):
    """A map-style dataset yielding (x, y) one example at a time, y a plain int."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], int(self.y[index])


def map_style(n_train: int = 120, n_test: int = 60):
    """A dict of map-style datasets."""
    return {"train": _Rows(*_images(n_train, 0)), "test": _Rows(*_images(n_test, 1)), "name": "rows"}


def features(n_train: int = 150, n_test: int = 60):
    """Tabular: 30 features, 3 classes."""
    return _images(n_train, 0, shape=(30,)), _images(n_test, 1, shape=(30,))


def tokens(n_train: int = 150, n_test: int = 60, vocab: int = 32):
    """Bags of 6 token ids in [0, vocab); class c prefers ids near 10 * c."""

    def draw(n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        ids = (y[:, None] * 10 + torch.randint(0, 6, (n, 6), generator=generator)) % vocab
        return ids.float(), y

    return draw(n_train, 0), draw(n_test, 1)
