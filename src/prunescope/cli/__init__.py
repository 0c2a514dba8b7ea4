"""The ``prunescope`` command: a thin Typer layer, one module per command family.

Every command parses and checks its options (:mod:`~prunescope.cli.options`), calls the
library or a workflow (:mod:`prunescope.pipeline`), and prints through the shared console
(:mod:`~prunescope.cli.terminal`); bad input and failures end in one line
(:func:`~prunescope.cli.inputs.run_app`). This module is the table of commands.
"""

from __future__ import annotations

import typer

from prunescope.cli import compare, hparams, inputs, listing, prune, regimes, run, scan, status, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="How far can each layer, and the whole model, be pruned?",
)
for name, command in {
    "run": run.run_command,
    "train": train.train_command,
    "sweep": compare.sweep_command,
    "scan": scan.scan_command,
    "pick": scan.pick_command,
    "compare": compare.compare_command,
    "prune": prune.prune_command,
    "gradual": train.gradual_command,
    "baseline": train.baseline_command,
    "measure": prune.measure_command,
    "status": status.status_command,
    "report": run.report_command,
    "hparams": hparams.hparams_command,
    "models": listing.models_command,
    "datasets": listing.datasets_command,
}.items():
    app.command(name)(command)
app.add_typer(regimes.app, name="regimes")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input (exit code 2) and failures (1) end with one line on stderr, never a traceback."""
    inputs.run_app(app, argv)
