"""The speed-up of 2:4 semi-structured sparse kernels over dense kernels on the same pruned weights.

``torch.sparse.to_sparse_semi_structured`` compresses a Linear weight whose every group of 4
consecutive weights along the input dimension holds at most 2 non-zeros, and multiplies it with
NVIDIA's sparse tensor cores: CUDA GPUs of compute capability 8.0 or newer (Ampere, Hopper…),
fp16 / bf16 (PyTorch documentation, "Accelerating inference with semi-structured (2:4)
sparsity"). A CPU has no such kernels: there, nothing is measured and the result says so.

On CUDA both models are the same pruned model in the chosen half precision, one with its 2:4
Linear weights converted, timed side by side in interleaved rounds
(:func:`prunescope.measure.timing.interleaved_times`); a layer the kernels refuse (shape,
dtype) stays dense and is listed with the reason. The two models' outputs are compared on one
batch, so that a wrong conversion shows.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from prunescope.measure.timing import interleaved_times, round_ratios

CPU_LINE = ("no 2:4 speed-up measured: a CPU has no semi-structured sparse kernels "
            "(torch.sparse.to_sparse_semi_structured needs a CUDA GPU of compute capability 8.0 or newer)")
MIN_CAPABILITY = (8, 0)  # Ampere: the first sparse tensor cores
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def two_four_linears(model: nn.Module) -> list[str]:
    """Names of the Linear modules whose weight (a plain parameter) has at most 2 non-zeros in every group of 4
    consecutive weights along the input dimension."""
    names = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if isinstance(module, nn.Linear) else None
        if weight is None or weight.shape[1] % 4:
            continue
        if bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(2) <= 2).all()):
            names.append(name)
    return names


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def semi_structured_speedup(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    device: torch.device,
    batch_sizes: tuple[int, ...] = (1, 256),
    repeats: int = 30,
    rounds: int = 5,
    dtype: str = "float16",
) -> dict[str, Any]:
    """``{"layers": the 2:4 Linear layers, "reason": why nothing was measured (None when it was), ...}``.

    When measured: ``converted`` (layers on sparse kernels), ``skipped`` ({layer: why not}),
    ``capability`` ("major.minor"), ``dtype``, ``speedup`` ({batch: dense-kernel median / sparse-kernel
    median}), ``speedup_range`` ({batch: [lowest, highest] per-round ratio}), ``max_abs_difference``
    (largest output difference of the two on a batch of 8 random inputs; None for token inputs).
    """
    layers = two_four_linears(model)
    result: dict[str, Any] = {"layers": layers, "device": str(device), "dtype": dtype, "capability": None,
                              "converted": [], "skipped": {}, "speedup": None, "speedup_range": None,
                              "max_abs_difference": None, "reason": None}
    if not layers:
        result["reason"] = "no Linear layer is 2:4 sparse: nothing for semi-structured kernels"
        return result
    if device.type != "cuda":
        result["reason"] = CPU_LINE
        return result
    capability = torch.cuda.get_device_capability(device)
    result["capability"] = f"{capability[0]}.{capability[1]}"
    if capability < MIN_CAPABILITY:
        result["reason"] = (f"no 2:4 speed-up measured: the GPU's compute capability {result['capability']} is below "
                            "8.0, and semi-structured sparse kernels need Ampere or newer")
        return result
    try:
        return result | _measure(model, input_shape, device, layers, batch_sizes, repeats, rounds, DTYPES[dtype])
    except (RuntimeError, NotImplementedError, TypeError) as error:  # a kernel PyTorch cannot run on this GPU
        result["reason"] = f"no 2:4 speed-up measured: semi-structured kernels failed ({_first_line(error)})"
        return result


def _measure(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device, layers: list[str],
    batch_sizes: tuple[int, ...], repeats: int, rounds: int, dtype: torch.dtype,
) -> dict[str, Any]:
    from torch.sparse import to_sparse_semi_structured

    dense = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    sparse = copy.deepcopy(dense)
    skipped = {}
    for name in layers:
        module = sparse.get_submodule(name)
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError) as error:  # a shape or dtype the kernels do not take: left dense
            skipped[name] = _first_line(error)
    converted = [name for name in layers if name not in skipped]
    if not converted:
        return {"skipped": skipped, "reason": "no 2:4 speed-up measured: no 2:4 layer could be converted ("
                                              + "; ".join(f"{n}: {why}" for n, why in skipped.items()) + ")"}
    difference = None
    if not any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules()):  # inputs are not token ids
        with torch.inference_mode():
            x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            difference = float((sparse(x).float() - dense(x).float()).abs().max())
    sizes = tuple(dict.fromkeys(batch_sizes))
    times = interleaved_times([sparse, dense], input_shape, device=device, batch_sizes=sizes, repeats=repeats,
                              rounds=rounds)

    def median(index: int, batch: int) -> float:
        return float(np.median([t for part in times[batch][index] for t in part]))

    return {
        "converted": converted,
        "skipped": skipped,
        "speedup": {str(b): median(1, b) / median(0, b) for b in sizes},
        "speedup_range": {str(b): [min(r), max(r)] for b in sizes if (r := round_ratios(times[b]))},
        "max_abs_difference": difference,
    }
