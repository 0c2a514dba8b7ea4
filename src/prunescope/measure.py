"""What a model costs: parameters, bytes, multiply-accumulates (dense and under sparsity), latency.

Every count here sees a pruned model as it computes: a module pruned with
``torch.nn.utils.prune`` (parameter ``weight_orig`` plus buffer ``weight_mask``) is counted
through its effective weight ``weight_orig * weight_mask``, once, under the name ``weight``
(see :func:`effective_parameters`); MACs see the weight as it is multiplied (:func:`count_macs`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunescope.device import resolve_device
from prunescope.errors import UsageError

LATENCY_BATCHES = (1, 256)  # batch sizes every report times: one sample, and a throughput batch
SAME_THROUGHPUT = 0.1  # batch sizes whose throughputs differ by less than this fraction are equally fast
_ORIG_SUFFIX = "_orig"
_MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class ParamCounts:
    """Parameter entries over the whole model (weights, biases, norm scales, everything).

    total: number of entries; nonzero: entries != 0 in the effective tensors.
    """

    total: int
    nonzero: int


@dataclass(frozen=True)
class SizeBytes:
    """Parameter storage in bytes.

    dense: every entry stored. sparse: an encoding estimate (see :func:`model_bytes`), not a file size.
    """

    dense: int
    sparse: int


@dataclass(frozen=True)
class MacCounts:
    """Multiply-accumulates for ONE input sample (see :func:`count_macs`).

    per_weight maps a weight name (``"fc1.weight"``, or a pseudo-key such as
    ``"attn.attention"`` for the attention matmuls) to ``(dense MACs, effective MACs)``.
    """

    dense: int
    effective: int
    per_weight: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass on a batch (see :func:`measure_latency`).

    Times in milliseconds per batch; throughput in samples per second (batch_size / median seconds).
    """

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput: float


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every parameter of ``model`` as the forward pass uses it.

    A parameter reparametrised by ``torch.nn.utils.prune`` (``<name>_orig`` with buffer
    ``<name>_mask``) is yielded once as ``(<name>, orig * mask)``; the mask itself is a buffer
    and never yielded. Tensors are detached; shared parameters appear once (first name).
    """
    for name, param in model.named_parameters():
        module_name, _, attr = name.rpartition(".")
        if attr.endswith(_ORIG_SUFFIX):
            base = attr.removesuffix(_ORIG_SUFFIX)
            mask = model.get_submodule(module_name)._buffers.get(base + _MASK_SUFFIX)
            if mask is not None:
                # Recompute orig * mask rather than read module.<base>: that attribute is only
                # refreshed by the pruning pre-hook on the next forward, so it can be stale.
                yield _join(module_name, base), param.detach() * mask
                continue
        yield name, param.detach()


def count_parameters(model: nn.Module) -> ParamCounts:
    """Count every parameter entry of ``model`` and how many are nonzero.

    All parameters count (weights, biases, normalisation scales and shifts); buffers such as
    BatchNorm running statistics or pruning masks do not. A pruned weight counts once, as its
    effective tensor ``orig * mask``.
    """
    total = nonzero = 0
    for _, tensor in effective_parameters(model):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return ParamCounts(total=total, nonzero=nonzero)


def model_bytes(model: nn.Module) -> SizeBytes:
    """Bytes needed to store the parameters, dense and with a sparse encoding.

    dense: sum over parameters of ``numel * element_size``.
    sparse: per parameter the smaller of its dense bytes and a bitmask encoding,
    ``nonzero * element_size + ceil(numel / 8)`` (the nonzero values plus one bit per position).
    This is an encoding estimate, not the size of any file prunescope writes.
    """
    dense = sparse = 0
    for _, tensor in effective_parameters(model):
        tensor_dense = tensor.numel() * tensor.element_size()
        bitmask = int(torch.count_nonzero(tensor)) * tensor.element_size() + (tensor.numel() + 7) // 8
        dense += tensor_dense
        sparse += min(tensor_dense, bitmask)
    return SizeBytes(dense=dense, sparse=sparse)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> MacCounts:
    """Multiply-accumulates of one forward pass on ONE sample of shape ``input_shape``.

    The one MAC counter of prunescope: ``pick``, ``prune``, ``measure`` and the reports all read
    it. It counts the ATen operators that run (:class:`torch.utils.flop_counter.FlopCounterMode`
    over a dry run on zeros of shape ``(1, *input_shape)``, model's device and floating dtype,
    eval mode, ``torch.inference_mode``; MACs = FLOPs / 2), so it sees every matrix product a
    model does, however it calls it, and it also measures a graph loaded from a torch.export
    file (:func:`prunescope.structured.export.load_exported`), which has no layers to hook.

    Counted: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``; not bias additions),
    convolutions (grouped and transposed too), attention kernels, and fused kernels
    FlopCounterMode has no formula for: recurrent layers (LSTM on CPU, ``mkldnn_rnn_layer``;
    any RNN on cuDNN, ``_cudnn_rnn``) at ``weight.numel()`` MACs per weight matrix per time
    step, and CPU attention. Not counted: elementwise operators, normalisation, pooling,
    embeddings, and any other operator without a formula.

    MACs are attributed to the weight an operator multiplies (an operand that is a parameter,
    a view of one, or a pruned module's effective weight ``orig * mask``), keyed by its name:
    ``"fc1.weight"``, ``"attn.in_proj_weight"``, ``"attn.out_proj.weight"``,
    ``"rnn.weight_hh_l0"``. A product of two activations (QK^T and AV of attention) goes to
    ``"<module>.attention"``, the innermost module it ran in. Effective MACs of a weight are its
    dense MACs times ``nonzero / numel`` of the operand as it was multiplied: what a kernel that
    skips zero weights (unstructured sparsity) would do; activation products count in full.

    Raises UsageError if ``input_shape`` is invalid or the model cannot run on it.
    """
    _check_shape(input_shape)
    counter = _AttributingCounter(model)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # The fused MultiheadAttention / TransformerEncoderLayer inference kernel has no formula;
        # the unfused path computes the same thing through counted projections and attention.
        torch.backends.mha.set_fastpath_enabled(False)
        with _eval_mode(model), torch.inference_mode(), counter:
            _forward(model, _example_input(model, 1, input_shape, _model_device(model), torch.zeros), input_shape)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts = counter.per_weight
    return MacCounts(
        dense=sum(dense for dense, _ in counts.values()),
        effective=sum(effective for _, effective in counts.values()),
        per_weight=counts,
    )


_ACTIVATION_PRODUCTS = "attention"  # key suffix for products of two activations (QK^T, AV)


class _AttributingCounter(FlopCounterMode):
    """FlopCounterMode that also charges each counted operator to the weight it multiplies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(display=False, custom_mapping=_FUSED_KERNEL_FLOPS)
        self.model = model
        # Storage of every parameter -> its name (shared parameters: first name, as named_parameters).
        self.parameters = {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters()}
        # Pruned tensors (<name>_orig + <name>_mask): the effective weight is rebuilt at each forward.
        self.pruned = [
            (module_name, attr.removesuffix(_ORIG_SUFFIX))
            for module_name, module in model.named_modules()
            for attr in module._parameters
            if attr.endswith(_ORIG_SUFFIX) and attr.removesuffix(_ORIG_SUFFIX) + _MASK_SUFFIX in module._buffers
        ]
        self.per_weight: dict[str, tuple[int, int]] = {}

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            macs = self.flop_registry[func_packet](*args, **kwargs, out_val=out) // 2
            self._charge(func_packet, macs, args)
        return super()._count_flops(func_packet, out, args, kwargs)

    def _charge(self, func_packet: Any, macs: int, args: Any) -> None:
        names = self._weight_names()
        operands = [
            (names[ptr], tensor)
            for tensor in torch.utils._pytree.tree_leaves(args)
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2
            and (ptr := tensor.untyped_storage().data_ptr()) in names
        ]
        if not operands:
            self._add(f"{self._innermost_module()}{_ACTIVATION_PRODUCTS}", macs, macs)
            return
        # A fused recurrent kernel multiplies several weight matrices, each once per time step:
        # its MACs split by size. An ordinary product has one weight operand.
        total = sum(tensor.numel() for _, tensor in operands)
        for name, tensor in operands:
            dense = macs * tensor.numel() // total
            self._add(name, dense, dense * int(torch.count_nonzero(tensor)) // tensor.numel())

    def _weight_names(self) -> dict[int, str]:
        names = dict(self.parameters)
        for module_name, attr in self.pruned:  # read now: the forward pre-hook has just rebuilt it
            tensor = getattr(self.model.get_submodule(module_name), attr)
            names[tensor.untyped_storage().data_ptr()] = _join(module_name, attr)
        return names

    def _innermost_module(self) -> str:
        """``"<name>."`` of the innermost module running now ("" at the root)."""
        # ModuleTracker names a module by its path from the root, the root's class name first.
        path = max(self.mod_tracker.parents, key=lambda name: name.count("."))
        _, _, inside_root = path.partition(".")
        return f"{inside_root}." if inside_root else ""

    def _add(self, key: str, dense: int, effective: int) -> None:
        old_dense, old_effective = self.per_weight.get(key, (0, 0))
        self.per_weight[key] = (old_dense + dense, old_effective + effective)


def _recurrent_flops(input_shape: torch.Size, weight_shapes: list[torch.Size]) -> int:
    """FLOPs of a fused recurrent kernel: every weight matrix (2-D) once per time step of every sequence."""
    steps = math.prod(input_shape[:-1])  # (L, N, in), (N, L, in), or packed (sum of lengths, in)
    return 2 * steps * sum(math.prod(shape) for shape in weight_shapes if len(shape) == 2)


def _mkldnn_rnn_layer_flops(input: torch.Size, weight0: torch.Size, weight1: torch.Size, *_: Any, **__: Any) -> int:
    """``aten.mkldnn_rnn_layer`` (an LSTM layer and direction on CPU): weight0 is W_ih, weight1 W_hh."""
    return _recurrent_flops(input, [weight0, weight1])


def _cudnn_rnn_flops(input: torch.Size, weight: list[torch.Size], *_: Any, **__: Any) -> int:
    """``aten._cudnn_rnn`` (a whole RNN/LSTM/GRU on CUDA): ``weight`` lists every layer's and direction's tensors."""
    # Written from the operator's schema; unlike the CPU formulas, not yet checked against count_macs on a GPU.
    return _recurrent_flops(input, weight)


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *_: Any, **__: Any) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``: QK^T and AV, as FlopCounterMode counts CUDA attention."""
    return 2 * math.prod(query[:-1]) * key[-2] * (query[-1] + value[-1])


# FlopCounterMode formulas (called with tensor shapes) for fused kernels torch 2.13 leaves uncounted.
_FUSED_KERNEL_FLOPS = {
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._cudnn_rnn: _cudnn_rnn_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
}


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
) -> Latency:
    """Time forward passes of ``model`` on random batches of shape ``(batch_size, *input_shape)``.

    The model runs on ``device`` in eval mode under ``torch.inference_mode``: ``warmup``
    untimed passes, then ``repeats`` passes timed one by one with ``time.perf_counter``
    (on CUDA after ``torch.cuda.synchronize``, so queued kernels are inside the timing).
    Reports the median and 10th/90th percentiles in ms per batch, and throughput in
    samples/s. The model's device and training flags are restored afterwards.

    Raises UsageError for batch_size < 1, warmup < 0, repeats < 1, an unknown or unavailable
    device, or an input shape the model cannot run on.
    """
    times_ms = _timed_passes(model, input_shape, device=device, batch_size=batch_size, warmup=warmup, repeats=repeats)
    return _latency(times_ms, batch_size)


EVAL_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)


def fastest_batch_size(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    most: int | None = None,
    candidates: tuple[int, ...] = EVAL_BATCH_SIZES,
    rounds: int = 3,
) -> int:
    """The candidate batch size with the highest measured throughput (examples/s) of ``model`` on ``device``.

    Evaluation is throughput-bound, and the best batch differs by device and model: on a CPU
    small convolutions run fastest at 64, far below what a GPU wants. Each candidate up to
    ``most`` (the examples there are to evaluate) gets 2 warm-up and 5 timed passes, in
    ``rounds`` interleaved rounds so that a machine getting busier or quieter hits every
    candidate alike; a candidate's throughput is its median over rounds. Among those within
    ``SAME_THROUGHPUT`` of the best, the largest wins: on a busy CPU a small batch measured
    fast by chance pays a thread synchronisation per batch when the scan runs. Measured once
    per architecture, input shape and device in a process.
    """
    usable = [b for b in candidates if most is None or b <= most] or [min(candidates)]
    if len(usable) == 1:
        return usable[0]
    # One measurement per architecture, input and device in a process: scans of other seeds reuse it.
    key = (tuple((name, tuple(p.shape), p.dtype) for name, p in model.named_parameters()), tuple(input_shape),
           str(device), tuple(usable))
    if key not in _FASTEST:
        _FASTEST[key] = _fastest(model, input_shape, device, usable, rounds)
    return _FASTEST[key]


_FASTEST: dict[tuple, int] = {}


def _fastest(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str, usable: list[int],
             rounds: int) -> int:
    rates: dict[int, list[float]] = {b: [] for b in usable}
    for _ in range(rounds):
        for batch_size in usable:
            rates[batch_size].append(measure_latency(model, input_shape, device=device, batch_size=batch_size,
                                                     warmup=2, repeats=5).throughput)
    medians = {b: float(np.median(r)) for b, r in rates.items()}
    best = max(medians.values())
    return max(b for b, rate in medians.items() if rate >= (1 - SAME_THROUGHPUT) * best)


def _timed_passes(
    model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device | str, batch_size: int, warmup: int,
    repeats: int,
) -> list[float]:
    """Milliseconds of each of ``repeats`` forward passes after ``warmup`` untimed ones (see measure_latency)."""
    _check_shape(input_shape)
    for name, value, least in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if value < least:
            raise UsageError(f"{name} must be at least {least}, got {value}")
    target = resolve_device(device)

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    original_device = _model_device(model)
    model.to(target)
    try:
        with _eval_mode(model), torch.inference_mode():
            # Zeros, not noise: a model that reads its input as token ids (an nn.Embedding) needs
            # valid indices, and dense kernels take as long on zeros as on any other value.
            batch = _example_input(model, batch_size, input_shape, target, torch.zeros)
            for _ in range(warmup):
                _forward(model, batch, input_shape)
            times_ms = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                _forward(model, batch, input_shape)
                sync()
                times_ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.to(original_device)
    return times_ms


def _latency(times_ms: list[float], batch_size: int) -> Latency:
    p10, median, p90 = (float(v) for v in np.percentile(times_ms, [10, 50, 90]))
    return Latency(
        batch_size=batch_size,
        median_ms=median,
        p10_ms=p10,
        p90_ms=p90,
        throughput=batch_size / (median / 1000.0),
    )


def measure_all(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 30,
) -> dict[str, Any]:
    """All measurements as one plain JSON-able dict.

    Keys: ``params_total``, ``params_nonzero``, ``bytes_dense``, ``bytes_sparse``,
    ``macs_dense``, ``macs_effective`` (per one sample) and ``latency``, which maps each batch
    size, as a string (JSON object keys are strings), to the fields of :class:`Latency`.
    """
    if not batch_sizes:
        raise UsageError("batch_sizes must name at least one batch size")
    params = count_parameters(model)
    size = model_bytes(model)
    macs = count_macs(model, input_shape)
    return {
        "params_total": params.total,
        "params_nonzero": params.nonzero,
        "bytes_dense": size.dense,
        "bytes_sparse": size.sparse,
        "macs_dense": macs.dense,
        "macs_effective": macs.effective,
        "latency": {
            str(batch): asdict(measure_latency(model, input_shape, device=device, batch_size=batch, repeats=repeats))
            for batch in dict.fromkeys(batch_sizes)
        },
    }


def measure_speedup(
    model: nn.Module,
    reference: nn.Module | None,
    input_shape: tuple[int, ...],
    *,
    device: torch.device | str = "cpu",
    batch_sizes: tuple[int, ...] = (1, 256),
    repeats: int = 30,
    rounds: int = 5,
) -> dict[str, Any]:
    """Cost of ``model`` and of a dense ``reference`` (None: no comparison), as one JSON-able dict.

    ``model`` and ``reference`` each map to ``{"params": entries, "macs": dense MACs per sample
    (:func:`count_macs`, which also counts graphs from torch.export), "latency": {batch size as a
    string: fields of :class:`Latency`}}`` on ``device``. The two models are timed side by
    side: ``repeats`` passes each, in ``rounds`` alternating chunks, so that a machine getting
    busier or quieter during the measurement slows both alike. ``speedup`` maps each batch
    size to reference median / model median latency, ``speedup_range`` to the lowest and
    highest of the per-round ratios; ``mac_reduction`` is reference MACs / model MACs. All
    three are None without a reference.
    """
    if not batch_sizes:
        raise UsageError("batch_sizes must name at least one batch size")
    if rounds < 1:
        raise UsageError(f"rounds must be at least 1, got {rounds}")
    sizes = tuple(dict.fromkeys(batch_sizes))
    modules = [model] if reference is None else [model, reference]
    chunk = max(1, repeats // rounds)
    times: dict[int, list[list[list[float]]]] = {batch: [[] for _ in modules] for batch in sizes}
    for batch in sizes:
        for round_number in range(max(1, min(rounds, repeats))):
            for timed, module in zip(times[batch], modules, strict=True):
                warmup = 5 if round_number == 0 else 1
                timed.append(_timed_passes(module, input_shape, device=device, batch_size=batch, warmup=warmup,
                                           repeats=chunk))

    def cost(index: int, module: nn.Module) -> dict[str, Any]:
        latency = {str(b): asdict(_latency([t for part in times[b][index] for t in part], b)) for b in sizes}
        return {"params": count_parameters(module).total, "macs": count_macs(module, input_shape).dense,
                "latency": latency}

    ours = cost(0, model)
    if reference is None:
        return {"model": ours, "dense": None, "speedup": None, "speedup_range": None, "mac_reduction": None}
    dense = cost(1, reference)
    speedup = {str(b): dense["latency"][str(b)]["median_ms"] / ours["latency"][str(b)]["median_ms"] for b in sizes}
    per_round = {
        str(b): [float(np.median(d)) / float(np.median(m)) for m, d in zip(*times[b], strict=True)] for b in sizes
    }
    return {
        "model": ours,
        "dense": dense,
        "speedup": speedup,
        "speedup_range": {b: [min(r), max(r)] for b, r in per_round.items()},
        "mac_reduction": dense["macs"] / ours["macs"] if ours["macs"] else None,
    }


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_shape(input_shape: tuple[int, ...]) -> None:
    if not all(isinstance(d, int) and d >= 1 for d in input_shape):
        raise UsageError(f"input shape must be positive integers, got {tuple(input_shape)}")


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for a model with neither."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _example_input(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    fill: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """``fill((batch_size, *input_shape))`` in the model's floating dtype (float32 if none)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return fill((batch_size, *input_shape), device=device, dtype=dtype)


def _forward(model: nn.Module, batch: torch.Tensor, input_shape: tuple[int, ...]) -> None:
    try:
        model(batch)
    except Exception as err:  # any failure here means the model does not take this input
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"model cannot run on input shape {tuple(input_shape)}: {first_line}") from err


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, then restore each submodule's own training flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
