"""Linear CKA between two models' representations of the same inputs.

Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019: with X (n × p) and Y (n × q) column-centred,

    CKA(X, Y) = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F),

1 when Y is X up to an orthogonal transform and isotropic scaling, near 0 for unrelated
representations. Zhou et al. (ICML 2023) compare two pruned models' outputs this way; we
also compare their penultimate features (the input of the classifier, captured by a
forward pre-hook on the model's last ``nn.Linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunescope.data.types import Split
from prunescope.errors import UsageError


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of representations ``x`` (n, p) and ``y`` (n, q) of the same n inputs, in [0, 1].

    Computed in float64; a constant representation (zero variance) has no similarity to
    anything and gives 0.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise UsageError(f"CKA needs two (n, features) matrices of the same n, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def classifier(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` in module order, taken as its classifier (None if it has none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@dataclass(frozen=True)
class Representations:
    """Outputs (n, classes) and penultimate features (n, d) of one model on n inputs; features
    are None when the model has no ``nn.Linear`` classifier to hook."""

    outputs: torch.Tensor
    features: torch.Tensor | None


def representations(model: nn.Module, split: Split, *, batch_size: int = 1024,
                    device: str | torch.device = "cpu") -> Representations:
    """The model's logits and the input of its classifier on every example of ``split``, in eval mode."""
    head = classifier(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].flatten(1).cpu())) if head else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outputs = torch.cat([model(split.x[i : i + batch_size].to(device)).cpu()
                                 for i in range(0, len(split), batch_size)])
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    features = torch.cat(captured) if captured and sum(len(c) for c in captured) == len(outputs) else None
    return Representations(outputs=outputs.flatten(1), features=features)


def similarity(a: Representations, b: Representations) -> dict[str, float | None]:
    """Linear CKA of the outputs and of the penultimate features (None where either lacks them)."""
    features = None
    if a.features is not None and b.features is not None:
        features = linear_cka(a.features, b.features)
    return {"cka_outputs": linear_cka(a.outputs, b.outputs), "cka_features": features}
