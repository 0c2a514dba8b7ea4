"""Turn sensitivity into per-target sparsities; baselines for comparison."""

from prunescope.pick.allocator import Allocator, Problem
from prunescope.pick.baselines import ALLOCATIONS, allocate
from prunescope.pick.budget import BudgetPicker, LatencyCosts
from prunescope.pick.pickers import (
    SCONCE_LEVELS,
    EnsemblePicker,
    KneePicker,
    Pick,
    Picker,
    ThresholdPicker,
    predicted_drops,
)
from prunescope.pick.refine import PairwiseRefiner, Refined, Refiner, RefineStep
from prunescope.pick.registry import ALLOCATORS, CHANNEL_BASELINES, PICKERS, make_allocator
from prunescope.pick.verify import Verified, VerifyStep, model_evaluator, verify

__all__ = [
    "ALLOCATIONS",
    "ALLOCATORS",
    "CHANNEL_BASELINES",
    "PICKERS",
    "SCONCE_LEVELS",
    "Allocator",
    "BudgetPicker",
    "EnsemblePicker",
    "KneePicker",
    "LatencyCosts",
    "PairwiseRefiner",
    "Pick",
    "Picker",
    "Problem",
    "RefineStep",
    "Refined",
    "Refiner",
    "ThresholdPicker",
    "Verified",
    "VerifyStep",
    "allocate",
    "make_allocator",
    "model_evaluator",
    "predicted_drops",
    "verify",
]
