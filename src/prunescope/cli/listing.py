"""``prunescope models`` and ``datasets``: what can be named on the command line."""

from __future__ import annotations

from prunescope import models as zoo
from prunescope.cli.options import (
    DataDir,
)
from prunescope.cli.terminal import console
from prunescope.data import available_datasets, describe_dataset, load_dataset
from prunescope.errors import UsageError
from prunescope.report.tables import (
    listing_table,
)


def models_command() -> None:
    """List the model zoo."""
    rows = [[m.name, m.description] for m in zoo.available_models()]
    console.print(listing_table("models (or package.module:factory)", ["name", "description"], rows))


def datasets_command(data_dir: DataDir = None) -> None:
    """List the datasets, with split sizes for those that can be loaded here."""
    rows = []
    for info in available_datasets():
        try:
            d = describe_dataset(load_dataset(info.name, data_dir=data_dir))
            sizes = f"{d['train']} / {d['val']} / {d['test']}"
            shape = "×".join(map(str, d["input_shape"]))
        except UsageError:
            sizes, shape = "needs --data-dir" if info.needs_data_dir else "unavailable", "-"
        rows.append([info.name, shape, sizes, info.description])
    columns = ["name", "input", "train / val / test", "description"]
    console.print(listing_table("datasets (or package.module:factory)", columns, rows))
