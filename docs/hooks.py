"""MkDocs hooks for prunescope's site: two checks that ``mkdocs build --strict`` turns into failures.

1. **Links to files outside docs/** (``../bench/results/crossval.json``, ``../examples/my_model.py``):
   written relative to the page, so that they also work on GitHub. Each must name an existing file
   of the repository, else the build warns (strict: fails). The file is copied into the site under
   ``repo/`` and the link rewritten to the copy, so the built site links to the same raw results.
   Links between pages and to their anchors are checked by MkDocs itself (``validation`` in mkdocs.yml);
   the README's relative links (to docs/ pages and repository files) are checked here too.
2. **Missing docstrings**: every ``::: identifier`` block of the API pages must resolve, and the
   object it shows, with every public function, class, method and property mkdocstrings renders
   under it (names without a leading underscore; a module's imported names only when listed in its
   ``__all__``; no submodules, no inherited members, as configured), must have a docstring.
   Attributes are documented in their class's or module's docstring and are not checked one by one.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.prunescope")

REPO = Path(__file__).resolve().parent.parent
SITE_COPIES = "repo"  # where files outside docs/ land in the site
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
# An inline code span (left alone) or a Markdown link / image whose target is group 2.
LINK = re.compile(r"(`+)[^`]*?\1|(?<=\]\()([^)\s]+)(?=\))")
IDENTIFIER = re.compile(r"^:::\s+([\w.]+)\s*$")


def _outside(target: str) -> bool:
    return not (target.startswith(("#", "/", "mailto:")) or "://" in target)


def _rewrite_links(text: str, page_dir: str, docs_dir: Path, files: Files, config: Any, where: str) -> str:
    def replace(match: re.Match) -> str:
        target = match.group(2)
        if target is None or not _outside(target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        inside = posixpath.normpath(posixpath.join(page_dir, path))
        if not inside.startswith("../"):
            return match.group(0)  # a page or file of docs/: MkDocs validates it
        repo_path = (docs_dir / inside).resolve()
        relative = repo_path.relative_to(REPO).as_posix() if repo_path.is_relative_to(REPO) else None
        if relative is None or not repo_path.is_file():
            log.warning("%s links to '%s', which is not a file of the repository", where, target)
            return match.group(0)
        copy = f"{SITE_COPIES}/{relative}"
        if files.get_file_from_path(copy) is None:
            files.append(File.generated(config, copy, abs_src_path=str(repo_path)))
        link = posixpath.relpath(copy, page_dir or ".")
        return link + (f"#{anchor}" if anchor else "")

    return LINK.sub(replace, text)


def on_pre_build(config: Any) -> None:
    """Every relative link of README.md must name a file of the repository (the README is not a page)."""
    readme = FENCE.sub("", (REPO / "README.md").read_text(encoding="utf-8"))
    for match in LINK.finditer(readme):
        target = match.group(2)
        if target is None or not _outside(target):
            continue
        if not (REPO / target.partition("#")[0]).is_file():
            log.warning("README.md links to '%s', which is not a file of the repository", target)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Check and rewrite links to files outside docs/; check the docstrings of the ``:::`` blocks."""
    where = page.file.src_uri
    page_dir = posixpath.dirname(where)
    docs_dir = Path(config["docs_dir"])
    pieces, last = [], 0
    for fence in FENCE.finditer(markdown):  # code blocks are left exactly as written
        pieces.append(_rewrite_links(markdown[last:fence.start()], page_dir, docs_dir, files, config, where))
        pieces.append(fence.group(0))
        last = fence.end()
    pieces.append(_rewrite_links(markdown[last:], page_dir, docs_dir, files, config, where))
    for identifier, options in _api_blocks(markdown):
        for problem in missing_docstrings(identifier, options):
            log.warning("%s: %s", where, problem)
    return "".join(pieces)


def _api_blocks(markdown: str) -> list[tuple[str, dict]]:
    """``(identifier, options)`` of every ``::: identifier`` block, options from its indented YAML."""
    lines = FENCE.sub("", markdown).splitlines()
    blocks = []
    for i, line in enumerate(lines):
        found = IDENTIFIER.match(line)
        if not found:
            continue
        body = []
        for following in lines[i + 1:]:
            if following.strip() and not following.startswith((" ", "\t")):
                break
            body.append(following)
        parsed = yaml.safe_load("\n".join(body)) if any(b.strip() for b in body) else None
        blocks.append((found.group(1), (parsed or {}).get("options", {}) or {}))
    return blocks


_LOADER: dict[str, Any] = {}


def _package() -> Any:
    """prunescope as griffe sees it (statically, from src/), loaded once per build."""
    if "package" not in _LOADER:
        import griffe

        loader = griffe.GriffeLoader(search_paths=[str(REPO / "src")])
        _LOADER["package"] = loader.load("prunescope")
        loader.resolve_aliases(implicit=False, external=False)
    return _LOADER["package"]


def missing_docstrings(identifier: str, options: dict) -> list[str]:
    """What the API block ``::: identifier`` would show without a docstring (empty: all documented)."""
    package = _package()
    try:
        obj = package if identifier == "prunescope" else package[identifier.removeprefix("prunescope.")]
    except (KeyError, ValueError):
        return [f"'::: {identifier}' names no object of the package"]
    problems: list[str] = []
    _walk(obj, options.get("members"), problems, set())
    return [f"{path} has no docstring" for path in problems]


def _walk(obj: Any, members: list[str] | None, problems: list[str], seen: set[str]) -> None:
    if obj.is_alias:
        obj = obj.final_target
    if obj.path in seen:
        return
    seen.add(obj.path)
    if not (obj.docstring and obj.docstring.value.strip()):
        problems.append(obj.path)
    if not (obj.is_class or obj.is_module) or members is False:
        return
    for name, member in obj.members.items():
        if members is not None and name not in members:
            continue
        if members is None and name.startswith("_"):
            continue
        if member.is_alias and (obj.is_class or not member.is_exported):
            continue  # an imported name is shown only when the module exports it
        if member.inherited or member.is_module or (member.is_attribute and "property" not in member.labels):
            continue
        _walk(member, None, problems, seen)
