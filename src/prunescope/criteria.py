"""Per-weight importance scores: which weights go first.

Every criterion maps each target to a tensor of the weight's shape; **lower scores are
pruned first**. Scores read the weight the forward pass uses (``weight_orig * weight_mask``
for a model pruned with ``torch.nn.utils.prune``), so already-pruned weights score zero.
Scores are computed once per model and reused for every allocation.

- ``magnitude``: |w|.
- ``random``: seeded uniform noise (a control, not a method).
- ``taylor``: (g·w)² accumulated (averaged) over mini-batches, g the gradient of the
  mini-batch's mean loss, i.e. (mean_n g_n · w)² per batch (Molchanov et al., "Pruning CNNs
  for resource efficient inference", 2017 / "Importance estimation for neural network
  pruning", 2019).
- ``fisher``: OBD's ½·H_qq·w_q² with the diagonal Hessian replaced by the empirical Fisher
  F_qq = (1/N) Σ_n g_{n,q}², g_n the loss gradient of *one sample* (LeCun et al., "Optimal
  Brain Damage", 1990). Per-sample gradients come from ``torch.func`` (see
  :func:`_per_sample_gradients`); with the mini-batch mean gradient instead the score would
  be Taylor's again. Where the samples' gradients cancel in the mean, Taylor and SNIP score
  a weight near zero and OBD does not.
- ``snip``: |g·w|, g the loss gradient averaged over the sampled mini-batches (Lee, Ajanthan
  & Torr, "SNIP: single-shot network pruning based on connection sensitivity", ICLR 2019;
  meant at initialisation, used here as a cheap proxy on the trained model). Its
  normalisation by Σ|g·w| is one constant for all weights and changes no mask.
- ``wanda``: |W_ij| · ‖X_j‖₂, X_j the j-th input feature of the layer over ``calibration``
  examples of the train split (for a convolution its im2col feature (in-channel, kh, kw)),
  compared within each output row (of the weight as (out, fan_in): a Hugging Face ``Conv1D``'s
  (in, out) weight is read transposed) (Sun et al., "A Simple and Effective Pruning Approach for
  Large Language Models", ICLR 2024). Scores are within-row ranks, so a layer's removed
  weights are spread evenly over its rows (at most one apart) and are not comparable across layers.
- ``lamp``: w[u]² / Σ_{v ≥ u} w[v]², weights of one layer sorted ascending by w²
  (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021).
  Scores are comparable across layers, so a global threshold gives LAMP's allocation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from prunescope.calibration import calibration_inputs, check_supported, input_norms
from prunescope.data.types import Split
from prunescope.errors import UsageError
from prunescope.evaluate import prediction_loss
from prunescope.targets import Target, effective_weight, parameter

Scores = dict[str, torch.Tensor]


def magnitude(model: nn.Module, targets: Sequence[Target], **_: object) -> Scores:
    return {t.name: effective_weight(model, t).abs() for t in targets}


def random(model: nn.Module, targets: Sequence[Target], *, seed: int = 0, **_: object) -> Scores:
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for t in targets:
        weight = parameter(model, t)
        scores[t.name] = torch.rand(weight.shape, generator=generator).to(weight.device)
    return scores


def lamp(model: nn.Module, targets: Sequence[Target], **_: object) -> Scores:
    scores = {}
    for t in targets:
        squared = effective_weight(model, t).flatten().double() ** 2
        ordered, order = torch.sort(squared)
        # Sum of squares of each weight and of every larger one: a reversed cumulative sum.
        tail = ordered.flip(0).cumsum(0).flip(0)
        score = torch.empty_like(squared)
        score[order] = ordered / tail.clamp_min(torch.finfo(torch.float64).tiny)
        scores[t.name] = score.view(t.shape).float()
    return scores


def _samples(data: Split, *, batches: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of ``batches`` seeded mini-batches of ``data``: the same examples for every criterion."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for start in range(0, min(len(data), batches * batch_size), batch_size):
        yield order[start : start + batch_size]


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode for the block, so that BatchNorm running statistics are not touched; the flag restored after."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _loss_gradient(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Scores:
    """Gradient of the mean cross-entropy of ``(x, y)`` with respect to each tensor of ``weights``."""
    with torch.enable_grad():
        grads = torch.autograd.grad(prediction_loss(model(x), y), list(weights.values()))
    return {name: g.detach() for name, g in zip(weights, grads, strict=True)}


def _batch_gradients(
    model: nn.Module, targets: Sequence[Target], data: Split, *, batches: int, batch_size: int, seed: int
) -> Iterator[Scores]:
    """Yield, per seeded mini-batch, the gradient of the batch's mean loss for every target (target's shape)."""
    weights = {t.name: parameter(model, t) for t in targets}
    with _evaluating(model) as device:
        for index in _samples(data, batches=batches, batch_size=batch_size, seed=seed):
            yield _loss_gradient(model, weights, data.x[index].to(device), data.y[index].to(device))


def _per_sample_gradients(
    model: nn.Module, targets: Sequence[Target], data: Split, *, batches: int, batch_size: int, seed: int
) -> Iterator[Scores]:
    """Yield, per seeded mini-batch, each sample's own loss gradient for every target: (batch, *target shape).

    ``torch.func.vmap(grad(...))`` over the batch's samples, the model called through
    ``functional_call``. Micro-batches of one sample each give the same gradients where vmap
    cannot serve: models with recurrent layers (LSTM / GRU / RNN have no vmap batching rule
    for their fused kernels: vmap would loop per sample itself, and fails on cuDNN), and
    models whose forward vmap rejects (a RuntimeError, e.g. an in-place update of captured
    state). BatchNorm is served by vmap: the model is in eval mode, so BatchNorm normalises
    with its running statistics and updates nothing.
    """
    weights = {t.name: parameter(model, t) for t in targets}
    path_of = {id(tensor): path for path, tensor in model.named_parameters()}
    paths = {name: path_of[id(tensor)] for name, tensor in weights.items()}
    use_vmap = not any(isinstance(m, nn.RNNBase) for m in model.modules())
    with _evaluating(model) as device:
        state = {**{k: v.detach() for k, v in model.named_parameters()}, **dict(model.named_buffers())}

        def sample_loss(trainable: Scores, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            replaced = state | {paths[name]: w for name, w in trainable.items()}
            return prediction_loss(functional_call(model, replaced, (x.unsqueeze(0),)), y.unsqueeze(0))

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        for index in _samples(data, batches=batches, batch_size=batch_size, seed=seed):
            x, y = data.x[index].to(device), data.y[index].to(device)
            grads = None
            if use_vmap:
                try:
                    with torch.enable_grad():
                        grads = {name: g.detach() for name, g in per_sample(weights, x, y).items()}
                except RuntimeError:
                    use_vmap = False  # vmap cannot run this forward: micro-batches of one from now on
            if grads is None:
                singles = [_loss_gradient(model, weights, x[i : i + 1], y[i : i + 1]) for i in range(len(index))]
                grads = {name: torch.stack([s[name] for s in singles]) for name in weights}
            yield grads


def _needs(data: Split | None) -> Split:
    if data is None:
        raise UsageError("this criterion needs training data for gradients")
    return data


def _batch_mean(
    model: nn.Module, targets: Sequence[Target], data: Split | None,
    per_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, batches: int, batch_size: int, seed: int,
) -> Scores:
    """Mean over the seeded mini-batches of ``per_batch(g, w)``, g the batch's mean loss gradient, w the weight."""
    weights = {t.name: effective_weight(model, t) for t in targets}
    totals = {name: torch.zeros_like(w) for name, w in weights.items()}
    count = 0
    for grads in _batch_gradients(model, targets, _needs(data), batches=batches, batch_size=batch_size, seed=seed):
        for name, g in grads.items():
            totals[name] += per_batch(g, weights[name])
        count += 1
    return {name: total / max(count, 1) for name, total in totals.items()}


def taylor(
    model: nn.Module, targets: Sequence[Target], *, data: Split | None = None, batches: int = 16,
    batch_size: int = 128, seed: int = 0, **_: object,
) -> Scores:
    """(g_b · w)² averaged over mini-batches b, g_b = mean_{n ∈ b} g_n the gradient of the batch's mean loss."""
    return _batch_mean(model, targets, data, lambda g, w: (g * w) ** 2, batches=batches, batch_size=batch_size,
                       seed=seed)


def snip(
    model: nn.Module, targets: Sequence[Target], *, data: Split | None = None, batches: int = 16,
    batch_size: int = 128, seed: int = 0, **_: object,
) -> Scores:
    """|ḡ · w|, ḡ the loss gradient averaged over the mini-batches (SNIP's connection sensitivity)."""
    mean = _batch_mean(model, targets, data, lambda g, w: g * w, batches=batches, batch_size=batch_size, seed=seed)
    return {name: score.abs() for name, score in mean.items()}


def fisher(
    model: nn.Module, targets: Sequence[Target], *, data: Split | None = None, batches: int = 16,
    batch_size: int = 128, seed: int = 0, **_: object,
) -> Scores:
    """OBD: ½ · w² · mean_n g_n², the mean over every sampled example n of its own squared loss gradient."""
    weights = {t.name: effective_weight(model, t) for t in targets}
    squares = {name: torch.zeros_like(w) for name, w in weights.items()}
    samples = 0
    per_sample = _per_sample_gradients(model, targets, _needs(data), batches=batches, batch_size=batch_size, seed=seed)
    for grads in per_sample:
        for name, g in grads.items():
            squares[name] += (g**2).sum(0)
        samples += len(next(iter(grads.values())))
    return {name: 0.5 * weights[name] ** 2 * total / max(samples, 1) for name, total in squares.items()}


def wanda_saliency(model: nn.Module, target: Target, inputs: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| · ‖X_j‖₂ of ``target`` as (out, fan_in) (rows are output units, whatever the layer stores),
    X the layer's inputs on ``inputs`` (N, *input_shape)."""
    norms = input_norms(model, target.module, inputs, param=target.param)
    return target.matrix(effective_weight(model, target)).abs() * norms


def wanda(
    model: nn.Module, targets: Sequence[Target], *, data: Split | None = None, calibration: int | None = None,
    seed: int = 0, **_: object
) -> Scores:
    if data is None:
        raise UsageError("the wanda criterion needs training data for its calibration inputs")
    inputs = calibration_inputs(data, calibration, seed=seed)
    check_supported(model, targets, inputs[:1], "use a criterion that needs no calibration data")
    scores = {}
    for t in targets:
        saliency = wanda_saliency(model, t, inputs)
        # Rank within each row; ties between rows at one rank go to the smaller saliency (scaled into [0, 0.5)).
        rank = saliency.argsort(1).argsort(1).double()
        tie_break = saliency.double() / (2 * saliency.max().double() + 1e-30)
        scores[t.name] = t.from_matrix(rank + tie_break).float()
    return scores


CRITERIA: dict[str, Callable[..., Scores]] = {
    "magnitude": magnitude,
    "random": random,
    "taylor": taylor,
    "fisher": fisher,
    "snip": snip,
    "lamp": lamp,
    "wanda": wanda,
}
NEEDS_DATA = frozenset({"taylor", "fisher", "snip", "wanda"})


def compute_scores(
    model: nn.Module,
    targets: Sequence[Target],
    criterion: str = "magnitude",
    *,
    data: Split | None = None,
    batches: int = 16,
    batch_size: int = 128,
    seed: int = 0,
    calibration: int | None = None,
) -> Scores:
    """Importance of every weight of every target under ``criterion`` (lower = pruned first).

    ``data`` (the train split) is needed by the gradient criteria ``taylor``, ``fisher`` and
    ``snip``, which read the same ``batches`` seeded mini-batches of ``batch_size`` samples,
    and by ``wanda``, which reads ``calibration`` seeded train inputs (no labels).
    """
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}")
    return CRITERIA[criterion](
        model, targets, data=data, batches=batches, batch_size=batch_size, seed=seed, calibration=calibration
    )
