"""Classify every case of tests/bad_inputs.py as clear / traceback / accepted / unclear.

clear: exit code != 0, one ``error:`` line on stderr, no traceback, no file in the case's folder changed.
traceback: an exception escaped (or a traceback was printed). accepted: exit code 0.
unclear: an error, but on several lines or after files were changed (e.g. training before refusing).
One process, one torch thread; the CLI runs in process. Works on older prunescope code too
(``PYTHONPATH=<old>/src``), which is how the "before" table was made.

Usage: PYTHONPATH=src python bench/bad_inputs.py bench/results/bad_inputs_after.json LABEL
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

import torch

KINDS = ("clear", "traceback", "accepted", "unclear", "setup-failed")


def _classify(case, world: Path, main, tree_hash) -> dict:
    try:
        argv = [str(a) for a in case.argv(world)]
    except Exception as error:  # the case could not build its files: reported, not counted as a result
        return {"case": case.id, "result": "setup-failed", "message": repr(error)}
    before = tree_hash(world)
    out, err = io.StringIO(), io.StringIO()
    code: int | str = 0
    escaped = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as done:
            code = done.code or 0
        except BaseException as error:  # what the user would see as a traceback
            code, escaped = "exception", "".join(traceback.format_exception_only(type(error), error)).strip()
    text = err.getvalue().strip()
    changed = tree_hash(world) != before
    if escaped or "Traceback" in out.getvalue() + err.getvalue():
        result = "traceback"
    elif code == 0:
        result = "accepted"
    elif text.startswith("error:") and "\n" not in text and not changed:
        result = "clear"
    else:
        result = "unclear"
    return {"case": case.id, "result": result, "exit": code, "changed_files": changed,
            "message": (escaped or text)[:300]}


def main() -> None:
    torch.set_num_threads(1)
    import prunescope.report.tables as report

    if not hasattr(report, "save_scan"):  # older code kept it in scan.files
        from prunescope.scan.files import save_scan

        report.save_scan = save_scan
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bad_inputs import CASES, make_template, new_world, tree_hash

    from prunescope.cli import main as cli_main

    root = Path(tempfile.mkdtemp())
    template = make_template(root / "template")
    rows = [_classify(case, new_world(template, root / f"w{i}"), cli_main, tree_hash) for i, case in enumerate(CASES)]
    summary = {kind: sum(row["result"] == kind for row in rows) for kind in KINDS}
    doc = {"label": sys.argv[2], "command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.UTC).isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, torch {torch.__version__}",
           "tried": len(rows), "summary": summary, "cases": rows}
    Path(sys.argv[1]).write_text(json.dumps(doc, indent=1) + "\n")
    print(sys.argv[2], len(rows), summary)


if __name__ == "__main__":
    main()
