"""Latency, throughput and speed-up: one timer (interleaved rounds, medians), and the fastest evaluation batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.device import resolve_device
from prunescope.errors import UsageError
from prunescope.measure.forward import check_input_shape, eval_mode, example_input, forward, model_device
from prunescope.measure.macs import count_macs
from prunescope.measure.size import count_parameters, model_bytes

LATENCY_BATCHES = (1, 256)  # batch sizes every report times: one sample, and a throughput batch


SAME_THROUGHPUT = 0.1  # batch sizes whose throughputs differ by less than this fraction are equally fast


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
    check_input_shape(input_shape)
    for name, value, least in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if value < least:
            raise UsageError(f"{name} must be at least {least}, got {value}")
    target = resolve_device(device)

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    original_device = model_device(model)
    model.to(target)
    try:
        with eval_mode(model), torch.inference_mode():
            # Zeros, not noise: a model that reads its input as token ids (an nn.Embedding) needs
            # valid indices, and dense kernels take as long on zeros as on any other value.
            batch = example_input(model, batch_size, input_shape, target, torch.zeros)
            for _ in range(warmup):
                forward(model, batch, input_shape)
            times_ms = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                forward(model, batch, input_shape)
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


def interleaved_times(
    modules: Sequence[nn.Module], input_shape: tuple[int, ...], *, device: torch.device | str,
    batch_sizes: tuple[int, ...], repeats: int, rounds: int,
) -> dict[int, list[list[list[float]]]]:
    """``{batch: [per module: [per round: milliseconds of each pass]]}``: ``repeats`` passes of each module in
    ``rounds`` alternating chunks (5 untimed passes before a module's first chunk, 1 before the others)."""
    if not batch_sizes:
        raise UsageError("batch_sizes must name at least one batch size")
    if rounds < 1:
        raise UsageError(f"rounds must be at least 1, got {rounds}")
    chunk = max(1, repeats // rounds)
    times: dict[int, list[list[list[float]]]] = {batch: [[] for _ in modules] for batch in batch_sizes}
    for batch in batch_sizes:
        for round_number in range(max(1, min(rounds, repeats))):
            for timed, module in zip(times[batch], modules, strict=True):
                warmup = 5 if round_number == 0 else 1
                timed.append(_timed_passes(module, input_shape, device=device, batch_size=batch, warmup=warmup,
                                           repeats=chunk))
    return times


def round_ratios(times: list[list[list[float]]]) -> list[float]:
    """Per round, the second module's median over the first's: ``times`` of one batch as from interleaved_times."""
    return [float(np.median(d)) / float(np.median(m)) for m, d in zip(*times, strict=True)]


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
    sizes = tuple(dict.fromkeys(batch_sizes))
    modules = [model] if reference is None else [model, reference]
    times = interleaved_times(modules, input_shape, device=device, batch_sizes=sizes, repeats=repeats, rounds=rounds)

    def cost(index: int, module: nn.Module) -> dict[str, Any]:
        latency = {str(b): asdict(_latency([t for part in times[b][index] for t in part], b)) for b in sizes}
        return {"params": count_parameters(module).total, "macs": count_macs(module, input_shape).dense,
                "latency": latency}

    ours = cost(0, model)
    if reference is None:
        return {"model": ours, "dense": None, "speedup": None, "speedup_range": None, "mac_reduction": None}
    dense = cost(1, reference)
    speedup = {str(b): dense["latency"][str(b)]["median_ms"] / ours["latency"][str(b)]["median_ms"] for b in sizes}
    per_round = {str(b): round_ratios(times[b]) for b in sizes}
    return {
        "model": ours,
        "dense": dense,
        "speedup": speedup,
        "speedup_range": {b: [min(r), max(r)] for b, r in per_round.items()},
        "mac_reduction": dense["macs"] / ours["macs"] if ours["macs"] else None,
    }
