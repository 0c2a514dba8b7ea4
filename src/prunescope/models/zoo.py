"""The zoo: small classifiers built from ``input_shape`` and ``num_classes``.

Every zoo model takes a batch of shape (N, C, H, W) to logits of shape (N, num_classes). Sizes that
depend on the input (flatten widths, whether a pool still fits) are worked out at construction, so the
same name works for 8x8 digits, 28x28 MNIST and 32x32 CIFAR. Every layer is a named attribute, so
parameter paths read like ``conv1.weight`` or ``layer1.0.conv1.weight``. The zoo's ``mlp`` and
``lenet300`` take any input shape, flat (tabular) ones included.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunescope.errors import UsageError


@dataclass(frozen=True)
class ModelInfo:
    """A zoo entry as listed to the user."""

    name: str
    description: str


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"model option {option} must be a positive integer, got {value!r}")
    return value


def _positive_ints(option: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int):  # `hidden=64` means one hidden layer
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise UsageError(f"model option {option} must be a list of positive integers, got {value!r}")
    return tuple(_positive_int(option, v) for v in value)


def _pool_or_skip(size: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """A 2x2 max pool while both spatial sides are >= 2, else an identity (tiny inputs).

    Returns the module and the spatial size (H, W) after it.
    """
    h, w = size
    if min(h, w) < 2:
        return nn.Identity(), size
    return nn.MaxPool2d(2), (h // 2, w // 2)


def _output_shape(
    owner: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...]
) -> torch.Size:
    """Shape of ``forward``'s output for one input of ``input_shape`` (batch dim dropped).

    ``forward`` runs the layers ``owner`` has so far. The dry run is in eval mode (so BatchNorm
    statistics stay untouched) on zeros (so no random numbers are drawn and seeding stays
    reproducible).
    """
    was_training = owner.training
    owner.eval()
    try:
        with torch.no_grad():
            out = forward(torch.zeros(1, *input_shape))
    except RuntimeError as e:
        raise UsageError(
            f"input shape {tuple(input_shape)} is too small for this model ({str(e).splitlines()[0]}); "
            "pick a model with fewer downsampling layers"
        ) from e
    finally:
        owner.train(was_training)
    return out.shape[1:]


class ConvBNReLU(nn.Module):
    """3x3 conv (no bias: BN has one) → BatchNorm → ReLU; (N, C_in, H, W) → (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class MLP(nn.Sequential):
    """Flatten → (Linear → ReLU) per hidden width → Linear; (N, *input_shape) → (N, num_classes).

    Layers are named ``fc1``, ``relu1``, ``fc2`` …, the last ``fc{len(hidden)+1}``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (128, 64)) -> None:
        widths = _positive_ints("hidden", hidden)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        in_features = int(torch.Size(input_shape).numel())
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(in_features, width)
            layers[f"relu{i}"] = nn.ReLU()
            in_features = width
        layers[f"fc{len(widths) + 1}"] = nn.Linear(in_features, num_classes)
        super().__init__(layers)


class LeNet5(nn.Module):
    """Caffe LeNet-5 of Han et al. (2015), with ReLU after each conv and fc1.

    conv1 20@5x5 → pool → conv2 50@5x5 → pool → fc1 500 → fc2 num_classes;
    (N, C, H, W) → (N, num_classes). Convs are unpadded on inputs of at least 16x16 (the
    original 431,080-parameter net on 28x28) and padded by 2 on smaller ones, so 8x8 digits fit.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        padding = 0 if min(height, width) >= 16 else 2
        self.conv1 = nn.Conv2d(channels, 20, 5, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(_output_shape(self, self.features, input_shape).numel(), 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, 50 * H' * W'), the input of fc1."""
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.flatten(self.pool2(self.relu2(self.conv2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu3(self.fc1(self.features(x))))


class SmallCNN(nn.Module):
    """Small BN conv net: 2x conv32 → pool → 2x conv64 → pool → global avg → fc 128 → fc.

    (N, C, H, W) → (N, num_classes). Pools are skipped once a side is below 2.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = ConvBNReLU(channels, 32)
        self.conv2 = ConvBNReLU(32, 32)
        self.pool1, size = _pool_or_skip((height, width))
        self.conv3 = ConvBNReLU(32, 64)
        self.conv4 = ConvBNReLU(64, 64)
        self.pool2, _ = _pool_or_skip(size)
        # Global average pooling keeps fc1 small whatever the input size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv2(self.conv1(x)))
        x = self.pool2(self.conv4(self.conv3(x)))
        x = self.flatten(self.avgpool(x))
        return self.fc2(self.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with a residual; (N, C_in, H, W) → (N, C_out, H/s, W/s).

    The shortcut is a 1x1 conv + BN projection when the shape changes (option B: a real
    module that Torch-Pruning can trace), else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016) with depth 6n+2: stem conv16, three stages of n blocks.

    Stage widths 16/32/64, stride 2 at stages 2 and 3, global avg pool, fc;
    (N, C, H, W) → (N, num_classes). Stages are ``layer1`` … ``layer3``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, blocks_per_stage: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, out_channels, stride)
        return nn.Sequential(first, *(BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


VGG_CFG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M")


class VGG(nn.Module):
    """Small CIFAR-style VGG with BN: ``features`` per ``cfg`` → global avg pool → ``classifier``.

    ``cfg`` lists conv widths (each a 3x3 conv-BN-ReLU) and ``"M"`` for a 2x2 max pool, which
    is skipped once a side is below 2. (N, C, H, W) → (N, num_classes).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: Sequence[int | str] = VGG_CFG) -> None:
        super().__init__()
        if isinstance(cfg, str) or not isinstance(cfg, Sequence) or not any(v != "M" for v in cfg):
            raise UsageError(f"model option cfg must be a list of conv widths and 'M', got {cfg!r}")
        channels, height, width = input_shape
        size = (height, width)
        layers: list[nn.Module] = []
        for item in cfg:
            if item == "M":
                pool, size = _pool_or_skip(size)
                layers.append(pool)
            else:
                layers.append(ConvBNReLU(channels, _positive_int("cfg", item)))
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


class LSTMClassifier(nn.Module):
    """Reads an image row by row: (N, C, H, W) → H steps of C*W features → LSTM → fc.

    The last layer's final hidden state (N, hidden) feeds ``fc``; output (N, num_classes).
    It is read as the last step of the output sequence (equal to ``h_n[-1]``), which is the
    tensor Torch-Pruning's tracer ties to the LSTM module, so its hidden units form a group.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128, num_layers: int = 1) -> None:
        super().__init__()
        channels, _, width = input_shape
        self.lstm = nn.LSTM(
            channels * width,
            _positive_int("hidden", hidden),
            num_layers=_positive_int("num_layers", num_layers),
            batch_first=True,
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # step t sees row t of every channel
        sequence, _ = self.lstm(rows)
        return self.fc(sequence[:, -1])


class CausalBlock(nn.Module):
    """One pre-norm GPT block: causal self-attention, then a 4× MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class CausalTransformer(nn.Module):
    """A small GPT-style language model: token ids (N, T) → next-token logits (N, T, vocabulary).

    ``input_shape`` is (T,), the longest sequence (learned positions); ``num_classes`` the
    vocabulary. The blocks are ``blocks.0`` … (one ``nn.ModuleList``), the embedding ``embed``,
    the output layer ``head`` (not tied to the embedding).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64, layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise UsageError(f"gpt reads token sequences: its input shape is (T,), got {tuple(input_shape)}")
        width, heads = _positive_int("width", width), _positive_int("heads", heads)
        if width % heads:
            raise UsageError(f"gpt: width {width} is not a multiple of heads {heads}")
        self.embed = nn.Embedding(num_classes, width)
        self.positions = nn.Parameter(torch.zeros(input_shape[0], width))
        self.blocks = nn.ModuleList(CausalBlock(width, heads) for _ in range(_positive_int("layers", layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > len(self.positions):
            raise UsageError(f"gpt was built for sequences of at most {len(self.positions)} tokens, got {length}")
        x = self.embed(tokens.long()) + self.positions[:length]
        # Added to the attention scores: -inf above the diagonal (a later token is not attended). A float mask,
        # not a bool one: PyTorch's fused CPU attention (eval, no grad) runs about 5x slower with a bool mask.
        mask = torch.full((length, length), float("-inf"), dtype=x.dtype, device=tokens.device).triu(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def _lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(input_shape, num_classes, hidden=(300, 100))


def _resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarResNet(input_shape, num_classes, blocks_per_stage=3)


def _resnet56(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarResNet(input_shape, num_classes, blocks_per_stage=9)


ZOO: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (MLP, "MLP, option hidden (default 128,64); 109,386 params on 1x28x28"),
    "lenet300": (_lenet300, "LeNet-300-100 MLP (Han et al. 2015); 266,610 params on 1x28x28"),
    "lenet5": (LeNet5, "Caffe LeNet-5 conv20-conv50-fc500 (Han et al. 2015); 431,080 params on 1x28x28"),
    "cnn": (SmallCNN, "small BN conv net 32-32-64-64, global avg pool, fc128; 74,794 params on 1x28x28"),
    "resnet20": (_resnet20, "CIFAR ResNet-20, projection shortcuts; 272,186 params on 1x28x28"),
    "resnet56": (_resnet56, "CIFAR ResNet-56, projection shortcuts; 855,482 params on 1x28x28"),
    "vgg": (VGG, "small BN VGG, option cfg (default 32,M,64,M,128,128,M,256,256,M); 1,128,938 params on 1x28x28"),
    "lstm": (LSTMClassifier, "LSTM over image rows, options hidden (128), num_layers (1); 82,186 params on 1x28x28"),
    "gpt": (CausalTransformer, "GPT-style causal language model on token ids, options width (64), layers (2), "
                               "heads (4); 141,312 params for 256 tokens, 128 positions"),
}


ANY_SHAPE = ("mlp", "lenet300")  # zoo models that flatten any input (tabular data included)
SEQUENCES = ("gpt",)  # zoo models of token sequences, input shape (T,)


def available_models() -> list[ModelInfo]:
    """The zoo, in listing order."""
    return [ModelInfo(name, description) for name, (_, description) in ZOO.items()]
