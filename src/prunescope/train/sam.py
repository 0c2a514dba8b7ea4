"""Sharpness-aware minimisation wrapping SGD or AdamW.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021: with g the loss gradient at w, ascend to w + ε with
ε = ρ · g / ‖g‖₂ (one norm over every parameter), take the gradient g_SAM = ∇L(w + ε)
there, return to w and let the base optimiser step from w with g_SAM. ρ = 0 is the base
optimiser, step for step (the gradient is recomputed at w itself).

The second forward pass runs with every BatchNorm's momentum at 0, so the running
statistics (and their batch counts) are updated once per step, as with the base optimiser
(the usual practice of SAM implementations; the batch statistics used inside the pass are
unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunescope.errors import UsageError


class SAM(torch.optim.Optimizer):
    """SAM around ``base`` (an optimiser over the same parameters); ``step`` needs a closure.

    ``closure()`` must zero nothing itself: it recomputes the loss of the same batch,
    calls ``backward`` and returns the loss. ``step(closure)`` expects the gradients at w
    to be in ``.grad`` already (the caller's ``loss.backward()``).
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float, model: nn.Module | None = None) -> None:
        if not rho >= 0:
            raise UsageError(f"SAM rho must be at least 0, got {rho}")
        self.base = base
        self.rho = float(rho)
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)] if model is not None else []
        # Share the base optimiser's groups and state: schedulers and state_dict act on the base.
        self.param_groups = base.param_groups
        self.state = base.state
        self.defaults = base.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def _ascend(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every parameter to w + ρ·g/‖g‖; return (parameter, ε) to undo it."""
        params = self._params()
        if not params:
            return []
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = self.rho / (norm + 1e-12)
        moved = []
        for p in params:
            e = p.grad * scale
            p.add_(e)
            moved.append((p, e))
        return moved

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One SAM step: ascend, recompute the gradient there with ``closure``, descend from w."""
        if closure is None:
            raise UsageError("SAM needs a closure that recomputes the loss of the batch")
        moved = self._ascend()
        self.base.zero_grad(set_to_none=True)
        momenta = [m.momentum for m in self.norms]
        counts = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in self.norms]
        try:
            for m in self.norms:
                m.momentum = 0.0
            with torch.enable_grad():
                loss = closure()
        finally:
            for m, momentum, count in zip(self.norms, momenta, counts, strict=True):
                m.momentum = momentum
                if count is not None:
                    m.num_batches_tracked.copy_(count)
            with torch.no_grad():
                for p, e in moved:
                    p.sub_(e)
        self.base.step()
        return loss
