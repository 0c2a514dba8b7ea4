"""What a command shows in the terminal: the shared console, progress bars, warnings every command may print."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from prunescope.cli.progress import progress_updates
from prunescope.prunable import PrunableShare
from prunescope.report.verdict import small_val_warning

console = Console()
if not console.is_terminal:
    console.width = max(console.width, 140)  # wide tables stay readable in logs and pipes


@contextmanager
def progress_bar(description: str, total: int | None):
    """One progress task; yields a callback that advances it by one step."""
    with progress_updates(console) as update:
        done = 0

        def advance(*_: object) -> None:
            nonlocal done
            done += 1
            update(description, done, total)

        yield advance


@contextmanager
def stage_progress():
    """One progress task per pipeline stage, kept on screen."""
    with progress_updates(console, transient=False) as update:
        yield update


@contextmanager
def growing_progress(description: str):
    """A progress task whose total can grow (adaptive scans plan as they go)."""
    with progress_updates(console) as update:
        yield lambda done, planned: update(description, done, planned)


def warn_if_val_is_small(examples: int, tolerance: float | None, metric: str = "accuracy") -> None:
    """Warn when one val example outweighs an accuracy tolerance (a language model's loss moves smoothly)."""
    if metric == "accuracy" and tolerance and (warning := small_val_warning(examples, tolerance)):
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)


def print_prunable(share: PrunableShare) -> dict:
    """Say how much of the model is prunable (a yellow warning below half); returns what a result records."""
    console.print(escape(share.line()), highlight=False, soft_wrap=True)
    if (warning := share.warning()) is not None:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]", highlight=False, soft_wrap=True)
    return share.to_dict()


def print_fallback(fallback: dict[str, str]) -> None:
    """Say which layers were pruned with the criterion's masks alone instead of by reconstruction."""
    for name, reason in fallback.items():
        console.print(f"[yellow]{name}: masks alone, not reconstructed ({reason})[/yellow]", highlight=False)


def print_plan(plan: str | None) -> None:
    """Say how reconstruction runs (block by block, or through the whole model and why), when it does."""
    if plan is not None:
        console.print(plan, highlight=False)


def print_units(units: str, curves: dict) -> None:
    """Say what a weight scan's units are: ``units`` (``matrix`` or ``block``) and ``curves`` ({unit: curve})."""
    if units == "block":
        console.print(f"units: {len(curves)} blocks, one sparsity each spread over its matrices by count "
                      "(--units block)", highlight=False)
    elif units == "matrix":
        console.print(f"units: {len(curves)} weight matrices, one sparsity each (--units matrix)", highlight=False)
