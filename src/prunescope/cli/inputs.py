"""Command-line input checked before any work, and every error reported as one line.

Used by :mod:`prunescope.cli`: option callbacks for output paths and data folders, the
refusal of NaN and infinity in every float option (which the parser accepts), and :func:`run_app`, which runs the
Typer app so that parser errors (a mistyped option, ``--epochs abc``) end, like
prunescope's own errors, with one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from prunescope.device import resolve_device
from prunescope.errors import PrunescopeError, UsageError
from prunescope.io import check_output_dir, check_output_file


def output_dir(value: Path) -> Path:
    """Callback of ``--out`` directories: a file or an unwritable place is refused before any work."""
    return check_output_dir(value)


def output_file(option: str):
    """Callback of an optional output-file option named ``option``."""

    def check(value: Path | None) -> Path | None:
        return None if value is None else check_output_file(value, option)

    return check


def device(value: str | None) -> str | None:
    """Callback of every ``--device``: checked here, kept as given (``auto`` is resolved where the work runs,
    so each worker of a process pool or Ray cluster picks its own CUDA device or CPU)."""
    if value is not None:
        resolve_device(value)
    return value


def data_dir(value: str | None) -> str | None:
    """Callback of ``--data-dir``: it must be an existing folder when given."""
    if value is not None and not Path(value).is_dir():
        raise UsageError(f"--data-dir {value} is not a directory: give the folder holding the dataset files")
    return value


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _finite_floats(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` refusing NaN and ±infinity in its float arguments, which the parser accepts."""
    if getattr(callback, "_finite_floats", False):
        return callback

    @functools.wraps(callback)
    def checked(**kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{_option(name)} must be a finite number, got {value}")
        return callback(**kwargs)

    checked._finite_floats = True  # type: ignore[attr-defined]
    return checked


def _refuse_non_finite(app: typer.Typer) -> None:
    """Wrap every command of ``app`` (and of its sub-apps) with :func:`_finite_floats`."""
    for info in app.registered_commands:
        if info.callback is not None:
            info.callback = _finite_floats(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _refuse_non_finite(group.typer_instance)


if hasattr(typer, "TyperException"):  # Typer >= 0.20 vendors click: its parser errors are TyperExceptions
    _PARSER_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
else:  # pragma: no cover - older Typer on click
    import click

    _PARSER_ERRORS = (click.ClickException,)


def fail(message: str, exit_code: int) -> None:
    """Print ``error: message`` as one line on stderr and exit."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


def run_app(app: typer.Typer, argv: list[str] | None) -> None:
    """Run ``app`` on ``argv`` and exit; bad input and failures end with one line, never a traceback."""
    _refuse_non_finite(app)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="prunescope", standalone_mode=False)
    except typer.Abort:  # Ctrl-C at a prompt
        fail("aborted", 1)
    except _PARSER_ERRORS as error:
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:  # bare `prunescope`: the help
            typer.echo(context.get_help(), err=True)
            sys.exit(2)
        where = f" (see '{context.command_path} --help')" if context is not None else ""
        fail(error.format_message().replace("\n", " ") + where, getattr(error, "exit_code", 2))
    except PrunescopeError as error:
        fail(str(error).replace("\n", " "), error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
