"""What a model costs: parameters, bytes, multiply-accumulates (dense and under sparsity), latency.

Every count here sees a pruned model as it computes: a module pruned with
``torch.nn.utils.prune`` (parameter ``weight_orig`` plus buffer ``weight_mask``) is counted
through its effective weight ``weight_orig * weight_mask``, once, under the name ``weight``
(:func:`effective_parameters`); MACs see the weight as it is multiplied (:func:`count_macs`).

- :mod:`~prunescope.measure.size`: parameters and bytes.
- :mod:`~prunescope.measure.macs`: the one MAC counter.
- :mod:`~prunescope.measure.timing`: the one timer (latency, throughput, speed-up, the fastest batch).
"""

from prunescope.measure.macs import MacCounts, count_macs
from prunescope.measure.size import ParamCounts, SizeBytes, count_parameters, effective_parameters, model_bytes
from prunescope.measure.timing import (
    EVAL_BATCH_SIZES,
    LATENCY_BATCHES,
    Latency,
    fastest_batch_size,
    measure_all,
    measure_latency,
    measure_speedup,
)

__all__ = ["EVAL_BATCH_SIZES", "LATENCY_BATCHES", "Latency", "MacCounts", "ParamCounts", "SizeBytes", "count_macs",
           "count_parameters", "effective_parameters", "fastest_batch_size", "measure_all", "measure_latency",
           "measure_speedup", "model_bytes"]
