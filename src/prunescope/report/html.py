"""One self-contained HTML page of a ``prunescope run`` result (``result.json``, schema v2).

The page embeds its plots as base64 PNG ``data:`` URIs and its CSS inline; it has no
JavaScript and references nothing outside itself (a Content-Security-Policy forbids it
too), so it can be mailed, archived or printed as one file. The page is a Jinja2 template
(``templates/report.html.j2``, its CSS ``templates/report.css``) with autoescaping: every
string that comes from the document (layer names, settings, model names, verdict text) is
HTML-escaped. The sections below prepare plain data (:class:`Table`, :class:`Note`…) for it.

Like :mod:`prunescope.report.tables` this renders; it computes nothing beyond differences of the
numbers it shows. Each section appears only when its data is in the document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from prunescope.io import write_text
from prunescope.report import findings, recovery, studies
from prunescope.report.blocks import Error, Section
from prunescope.report.formats import num
from prunescope.report.quality import Quality
from prunescope.report.schema import RESULT_FILE, SCHEMA, SCHEMA_VERSION, check_result

REPORT_FILE = "report.html"


def write_html(out_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write :func:`render_html` of ``doc`` to ``out_dir/report.html`` atomically; return its path."""
    return write_text(Path(out_dir) / REPORT_FILE, render_html(doc))


SECTIONS = (*findings.SECTIONS, *recovery.SECTIONS, *studies.SECTIONS)


@cache
def _templates() -> jinja2.Environment:
    """The report's templates, package data of prunescope, every value autoescaped."""
    return jinja2.Environment(loader=jinja2.PackageLoader("prunescope.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def _error_section(render: Callable, error: Exception) -> Section:
    name = render.__name__.strip("_").replace("_", " ")
    return Section(f"error-{render.__name__.strip('_')}", f"{name} (not rendered)",
                    [Error(f"This part of the result could not be shown: {type(error).__name__}: {error}")])


def render_html(doc: dict[str, Any]) -> str:
    """The whole report page of a checked ``prunescope run`` result document."""
    check_result(doc)
    sections = []
    for render in SECTIONS:
        try:
            section = render(doc)
        except Exception as error:  # a malformed section is shown as such
            section = _error_section(render, error)
        if section is not None:
            sections.append(section)

    model = doc.get("model") if isinstance(doc.get("model"), Mapping) else {}
    dataset = doc.get("dataset") if isinstance(doc.get("dataset"), Mapping) else {}
    title = "prunescope report"
    if model.get("name") or dataset.get("name"):
        title += f": {model.get('name', '?')} on {dataset.get('name', '?')}"
    sparsity = num(doc.get("sparsity"))
    meta = [f"pruned to {sparsity:.0%} of the weights" if sparsity is not None else None,
            f"created {doc['created']}" if doc.get("created") else None,
            f"prunescope {doc['prunescope_version']}" if doc.get("prunescope_version") else None]
    units = ("Perplexity is the exponential of the mean token loss (lower is better); a change of it is in percent."
             if Quality.of(doc).perplexity else "Accuracies are fractions of the examples classified correctly, "
             "shown in percent; intervals are 95%; pts are accuracy points.")
    return _templates().get_template("report.html.j2").render(
        title=title, meta=" · ".join(m for m in meta if m), sections=sections, result_file=RESULT_FILE, schema=SCHEMA,
        version=SCHEMA_VERSION, units=units,
    )
