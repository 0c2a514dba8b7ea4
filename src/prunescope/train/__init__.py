"""Training: dense training, fine-tuning, gradual / iterative pruning, scratch-E / scratch-B.

- :mod:`~prunescope.train.loop`: :func:`train`, the one seeded, checkpointed, resumable loop
  (optionally with fixed keep-masks and early stopping).
- :mod:`~prunescope.train.finetune`: :func:`finetune`, training with the masks held.
- :mod:`~prunescope.train.gradual`: polynomial (AGP) and iterative schedules and
  :func:`gradual_prune`.
- :mod:`~prunescope.train.scratch`: scratch-E / scratch-B baselines.
- :mod:`~prunescope.train.batchnorm`: BatchNorm statistics re-estimated after pruning.
- :mod:`~prunescope.train.sam`: sharpness-aware minimisation around SGD or AdamW
  (``TrainConfig(optimizer="sam" | "sam-adamw", sam_rho=...)``).
"""

from prunescope.train.batchnorm import (
    DEFAULT_BN_BATCHES,
    RecalibratedPruning,
    bn_batches,
    recalibrate_batchnorm,
    recalibrated,
    recalibrating,
)
from prunescope.train.finetune import finetune
from prunescope.train.gradual import (
    GradualResult,
    GradualStep,
    gradual_prune,
    iterative_schedule,
    polynomial_schedule,
)
from prunescope.train.loop import OPTIMIZERS, SCHEDULES, EpochRecord, TrainConfig, TrainResult, train
from prunescope.train.scratch import measure_macs, scratch_epochs, train_scratch

__all__ = [
    "DEFAULT_BN_BATCHES",
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochRecord",
    "GradualResult",
    "GradualStep",
    "RecalibratedPruning",
    "TrainConfig",
    "TrainResult",
    "bn_batches",
    "finetune",
    "gradual_prune",
    "iterative_schedule",
    "measure_macs",
    "polynomial_schedule",
    "recalibrate_batchnorm",
    "recalibrated",
    "recalibrating",
    "scratch_epochs",
    "train",
    "train_scratch",
]
