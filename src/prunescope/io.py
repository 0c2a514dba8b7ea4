"""Atomic file output, and reading the JSON and TOML files users give.

Output: a crash or Ctrl-C never leaves a half-written result behind. Output paths are checked
before any work (:func:`check_output_dir`, :func:`check_output_file`) and a path that still
cannot be written is a one-line error, never an ``OSError`` traceback.

Input: :func:`read_json` and :func:`read_toml` turn every way a file can fail to parse (missing,
unreadable, not UTF-8, bad syntax, nested too deeply for the parser's recursion) into one
UsageError line naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from prunescope.errors import PrunescopeError, UsageError


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``os.replace`` is atomic on one file system, so readers see the old file or the new
    one, never a mix. Parent directories are created. A path that cannot be created (a file
    where a folder should be, no permission) is a UsageError; a failure while writing (disk
    full) a PrunescopeError; either leaves ``path`` as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {_reason(error)}; choose an output path you can write to") from None
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise PrunescopeError(f"cannot write {path}: {_reason(error)}") from error
        raise
    return path


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a mkdir -p would create into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(folder: Path, path: Path, option: str) -> None:
    """UsageError unless ``folder`` (where ``path`` goes) is, or can be created as, a writable directory."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UsageError(f"{option} {path} is inside {existing}, which is a file: choose another path")
    try:  # a probe, not os.access: root passes os.access on read-only file systems and in /proc
        os.rmdir(tempfile.mkdtemp(prefix=".prunescope-probe-", dir=existing))
    except OSError as error:
        reason = _reason(error)
        raise UsageError(f"{option} {path}: cannot write in {existing} ({reason}); choose another path") from None


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` if it is, or can be created as, a directory this process can write in; else UsageError.

    Checked before any work, so that a mistyped ``--out`` costs nothing and changes nothing.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a directory: give a directory (created if missing)")
    _check_creatable(path, path, option)
    return path


def check_output_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` if a file can be written there (not a directory, parent creatable); else UsageError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file name")
    _check_creatable(path.parent, path, option)
    return path


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def loads_finite(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (ValueError): for files whose numbers are measurements."""
    return json.loads(text, parse_constant=_refuse_constant)


def _line(message: str, hint: str) -> UsageError:
    return UsageError(f"{message}; {hint}" if hint else message)


def read_text(path: str | os.PathLike[str], source: str, *, hint: str = "") -> str:
    """The UTF-8 text of file ``path``; a one-line UsageError naming ``source`` (e.g. "allocation
    file a.json") when it is missing, a directory, unreadable or not UTF-8, ending in ``hint``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _line(f"{source} does not exist", hint) from None
    except IsADirectoryError:
        raise _line(f"{source} is a directory, not a file", hint) from None
    except OSError as error:
        raise _line(f"cannot read {source}: {_reason(error)}", hint) from None
    except UnicodeDecodeError:
        raise _line(f"{source} is not UTF-8 text", hint) from None


def parse_json(text: str, source: str, *, finite: bool = False, hint: str = "") -> Any:
    """``json.loads(text)``, whose failures are one UsageError line naming ``source``; ``finite``
    also refuses ``NaN`` and ``Infinity`` (see :func:`loads_finite`)."""
    try:
        return loads_finite(text) if finite else json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise _line(f"{source} is not valid JSON ({where}: {error.msg})", hint) from None
    except ValueError as error:  # a refused constant
        raise _line(f"{source} is not valid JSON ({error})", hint) from None
    except RecursionError:  # "[" * 100000: the decoder recurses once per level
        raise _line(f"{source} is not valid JSON (nested too deeply)", hint) from None


def read_json(path: str | os.PathLike[str], source: str, *, finite: bool = False, hint: str = "") -> Any:
    """The JSON document in file ``path`` (see :func:`read_text` and :func:`parse_json`)."""
    return parse_json(read_text(path, source, hint=hint), source, finite=finite, hint=hint)


def read_toml(path: str | os.PathLike[str], source: str, *, hint: str = "") -> dict[str, Any]:
    """The TOML document in file ``path``; any failure is one UsageError line naming ``source``."""
    text = read_text(path, source, hint=hint)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _line(f"{source} is not valid TOML: {error}", hint) from None
    except RecursionError:
        raise _line(f"{source} is not valid TOML (nested too deeply)", hint) from None


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> Path:
    """Rows of one dict each; the header is the union of their keys, in first-seen order."""
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
