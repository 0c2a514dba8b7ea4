"""A griffe extension for the API pages: the docstrings' Sphinx roles become code with a link where one exists.

prunescope's docstrings cross-reference with Sphinx roles (``:func:`~prunescope.scan.scan```,
``:class:`Curves```), which Markdown would print as they are. This turns each into inline code
wrapped in an *optional* autoref: a link when the target is rendered on some API page, plain code
when it is not (so a reference to an object the site does not show is never a broken link).
``~`` shows the last part of the name only, as in Sphinx; a name without a dot is looked up in the
docstring's module, then in its package.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc):`(~?)([\w.]+(?:\s+[\w.]+)*)`")  # may wrap lines


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring once the package is loaded."""

    def on_object(self, *, obj: Any, loader: Any, **kwargs: Any) -> None:
        """Replace the roles in ``obj``'s docstring (if any) by optional autorefs around inline code."""
        if obj.is_alias or obj.docstring is None or ":" not in obj.docstring.value:
            return  # an imported name: its docstring is rewritten where it is defined
        module = obj if obj.is_module else obj.module

        def replace(match: re.Match) -> str:
            short, name = match.group(1) == "~", re.sub(r"\s+", "", match.group(2)).lstrip(".")
            target = _resolve(name, module, loader)
            shown = name.rsplit(".", 1)[-1] if short else name
            return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(shown)}</code></autoref>'

        obj.docstring.value = ROLE.sub(replace, obj.docstring.value)


def _resolve(name: str, module: Any, loader: Any) -> str:
    """The full path of ``name`` as written in ``module``'s docstrings (unchanged when nothing matches)."""
    if name.startswith("prunescope"):
        return name
    for scope in (module.path, module.path.rsplit(".", 1)[0]):
        candidate = f"{scope}.{name}"
        try:
            loader.modules_collection.get_member(candidate)
        except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return candidate
    return name
