"""What a section of the page is made of: tables, notes, errors, lists, pictures, columns, and the section itself.

Plain data for the Jinja2 template (``templates/report.html.j2``), which draws and escapes it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import matplotlib
from matplotlib.figure import Figure

from prunescope.report.formats import acc_of, ci_of, pct
from prunescope.report.plots import (
    png_bytes,
)


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, optionally a 95% interval shown small beneath it, or emphasised."""

    text: str
    ci: str | None = None
    em: bool = False


def cell_of(value: Any) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


def accuracy_cell(metrics: Any) -> Cell:
    """Accuracy with its 95% interval underneath, small."""
    accuracy, ci = acc_of(metrics), ci_of(metrics)
    if accuracy is None:
        return Cell("–")
    return Cell(pct(accuracy), None if ci is None else f"{pct(ci[0], 1)}–{pct(ci[1], 1)}")


@dataclass(frozen=True)
class Table:
    """Rows of cells under headers; the first ``left`` columns are text (left-aligned), the others numbers, and
    the first cell of a row is its header."""

    headers: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    left: int = 1
    css: str = ""
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Note:
    text: str
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class Error:
    """What could not be shown, and why, in red."""

    text: str
    kind: ClassVar[str] = "error"


@dataclass(frozen=True)
class Items:
    """A list of sentences (``css``: ``plain``, or ``verdict`` for the highlighted box)."""

    items: list[str]
    css: str = "plain"
    kind: ClassVar[str] = "items"


@dataclass(frozen=True)
class Picture:
    """A plot as base64 PNG data, with its alt text and an optional caption."""

    png: str
    alt: str
    caption: str | None = None
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class Columns:
    """Parts side by side."""

    parts: list[Any]
    kind: ClassVar[str] = "columns"


def table_of(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: Any = None,
           left: int = 1, css: str = "") -> Table:
    return Table([str(h) for h in headers], [[cell_of(c) for c in row] for row in rows],
                 None if caption is None else str(caption), left, css)


def note_of(text: Any) -> Note:
    return Note(str(text))


def figure_of(build: Callable[[], Figure], alt: str, caption: Any = None) -> Picture | Error:
    """A plot embedded as a base64 PNG; a plot that fails becomes a visible note, not a failed page."""
    try:
        # Document strings (layer names) are drawn as they are: a "$" starts no mathtext.
        with matplotlib.rc_context({"text.parse_math": False}):
            png = png_bytes(build())
    except Exception as error:  # one plot must not take the whole report down
        return Error(f"plot not drawn: {type(error).__name__}: {error}")
    return Picture(base64.b64encode(png).decode("ascii"), alt, None if caption is None else str(caption))


@dataclass
class Section:
    """A section: the template draws ``lead`` (the notes and the first table or plot, kept on one printed page
    with the heading), then ``rest``."""

    anchor: str
    title: str
    parts: list[Any] = field(default_factory=list)

    @property
    def _leading(self) -> int:
        count = 0
        while count < len(self.parts) and isinstance(self.parts[count], Note):
            count += 1
        return count + 1

    @property
    def lead(self) -> list[Any]:
        return self.parts[: self._leading]

    @property
    def rest(self) -> list[Any]:
        return self.parts[self._leading :]
