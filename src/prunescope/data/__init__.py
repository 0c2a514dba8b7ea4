"""Datasets as tensors: built-ins (digits, mnist, fashion-mnist, cifar10, synthetic) and user factories.

``load_dataset(name, data_dir=..., val_fraction=..., seed=..., **options)`` returns a
:class:`Dataset` whose ``spec`` rebuilds it (``load_from_spec``).
"""

from prunescope.data.registry import (
    DATA_DIR_ENV,
    DatasetInfo,
    available_datasets,
    describe_dataset,
    load_dataset,
    load_from_spec,
)
from prunescope.data.types import Dataset, Split

__all__ = [
    "DATA_DIR_ENV",
    "Dataset",
    "DatasetInfo",
    "Split",
    "available_datasets",
    "describe_dataset",
    "load_dataset",
    "load_from_spec",
]
