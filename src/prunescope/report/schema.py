"""The result schema every command writes: one JSON document per command (``result.json``, ``scan.json``,
``pick.json``), built by :func:`document` and read back by :func:`load_result`.

Its sections are described in ``docs/result-schema.md`` and :mod:`prunescope.report.tables`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prunescope import __version__
from prunescope.errors import UsageError
from prunescope.io import read_json

SCHEMA = "prunescope.result"
SCHEMA_VERSION = 2
RESULT_FILE = "result.json"


def document(command: str, settings: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """The top-level result document of one command."""
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prunescope_version": __version__,
        "settings": settings,
        **sections,
    }


def check_result(doc: Any, source: str = "the document") -> None:
    """Raise a one-line :class:`UsageError` unless ``doc`` is a ``prunescope run`` result of schema v2."""
    if not isinstance(doc, dict):
        raise UsageError(f"{source} is not a prunescope run result (a JSON {type(doc).__name__}, not an object); "
                         "re-run prunescope run")
    schema, version, command = doc.get("schema"), doc.get("version"), doc.get("command", "run")
    if schema != SCHEMA or version != SCHEMA_VERSION or command not in ("run", "regimes", "hparams"):
        found = f"schema {schema!r} version {version!r}"
        if command not in ("run", "regimes", "hparams"):
            found += f", command {command!r}"
        raise UsageError(f"{source} is not a prunescope run result ({found}; this prunescope reads "
                         f"{SCHEMA!r} version {SCHEMA_VERSION}); re-run prunescope run")


def load_result(out_dir: str | Path) -> dict[str, Any]:
    """The checked ``result.json`` of ``out_dir`` (the ``--out`` directory of ``prunescope run``).

    ``out_dir`` may also name the JSON file itself. Missing, unreadable, corrupt or foreign
    files are one-line :class:`UsageError`\\ s.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise UsageError(f"{out_dir} does not exist: give the --out directory of prunescope run")
    path = out_dir if out_dir.is_file() else out_dir / RESULT_FILE
    if not path.is_file():
        raise UsageError(f"no {RESULT_FILE} in {out_dir}: give the --out directory of a finished prunescope run")
    doc = read_json(path, str(path), hint="re-run prunescope run")
    check_result(doc, str(path))
    return doc
