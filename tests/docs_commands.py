"""The command lines and Python snippets that README.md and docs/ show, as tests/test_docs_commands.py runs them.

A *command* is a ``prunescope ...`` (or ``python -m prunescope ...``) invocation found in a fenced
``bash`` / ``sh`` / ``shell`` / ``console`` block: ``\\`` continuations joined, ``$ `` prompts and
``# comments`` dropped, ``a && b`` chains split, ``NAME=value`` prefixes kept as the command's
environment. Other programs in those blocks (pip, mkdocs, the bench scripts) are not commands of
the package and are left out. A *snippet* is the code of a fenced ``python`` block.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunescope.data.idx import read_idx

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# What starts a command of the package once the environment prefix is dropped.
_ENTRY_POINTS = (("prunescope",), ("python", "-m", "prunescope"), ("python3", "-m", "prunescope"))


@dataclass(frozen=True)
class Command:
    """One command line of the docs: where it is, its text as the test's table names it, and its parts.

    text: the command as one line (continuations joined, prompt and comment dropped, one space between
    words); env: its ``NAME=value`` prefix; argv: the arguments after ``prunescope``.
    """

    doc: str
    line: int
    text: str
    env: dict[str, str]
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass(frozen=True)
class Snippet:
    """The code of one fenced python block: the document, the block's line and its index among the document's."""

    doc: str
    line: int
    index: int
    code: str

    @property
    def key(self) -> tuple[str, int]:
        return self.doc, self.index

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def documents(root: Path = ROOT) -> list[Path]:
    """README.md, then every page under docs/ in path order (the order the commands are run in)."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, line of the first code line, code lines) of every fenced block of ``path``."""
    language, start, lines = None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if language is None and fence:
            language, start, lines = fence.group(1).lower(), number + 1, []
        elif language is not None and line.strip().startswith("```"):
            yield language, start, lines
            language = None
        elif language is not None:
            lines.append(line)


def _logical_lines(language: str, start: int, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each shell line with its ``\\`` continuations joined; in console blocks only
    the lines after a ``$ `` prompt (the rest is output)."""
    pending, first = "", start
    for number, raw in enumerate(lines, start):
        line = raw.strip()
        if not pending:
            first = number
            if language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            elif line.startswith("$ "):
                line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def _segments(text: str) -> Iterator[list[str]]:
    """The words of each command of a shell line: comments dropped, split at ``&&``, ``||`` and ``;``."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    words: list[str] = []
    for word in lexer:
        if word in {"&&", "||", ";"}:
            yield words
            words = []
        else:
            words.append(word)
    yield words


def _command(doc: str, line: int, words: list[str]) -> Command | None:
    """The package's command in ``words`` (None when another program runs)."""
    env = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    for entry in _ENTRY_POINTS:
        if tuple(words[: len(entry)]) == entry:
            argv = tuple(words[len(entry):])
            text = " ".join([*(f"{k}={v}" for k, v in env.items()), "prunescope", *map(shlex.quote, argv)])
            return Command(doc, line, text, env, argv)
    return None


def steps(root: Path = ROOT) -> list[Command | Snippet]:
    """Every command of the package and every python snippet the docs show, in document order
    (a snippet may write what the next command reads, as README's ``prunescope.wrap`` does)."""
    found: list[Command | Snippet] = []
    for path in documents(root):
        doc = path.relative_to(root).as_posix()
        python = 0
        for language, start, lines in _blocks(path):
            if language in {"python", "py"}:
                found.append(Snippet(doc, start, python, "\n".join(lines) + "\n"))
                python += 1
            elif language in SHELL_LANGUAGES:
                for line, text in _logical_lines(language, start, lines):
                    found += [c for words in _segments(text) if (c := _command(doc, line, words)) is not None]
    return found


# --- Placeholders: small real files standing in for the docs' DIR ---------------------------------------------

_IDX_NAMES = {"train": "train", "test": "t10k"}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (uncompressed, which the reader takes as well as gzip)."""
    header = np.array([0x08 << 8 | array.ndim, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _patterns(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-in images: a fixed random template per class (10) plus noise, uint8."""
    templates = rng.integers(0, 256, (10, *shape))
    y = np.arange(n) % 10
    x = np.clip(templates[y] * 0.7 + rng.integers(0, 77, (n, *shape)), 0, 255)
    return x.astype(np.uint8), y.astype(np.uint8)


def write_small_data(folder: Path, source: Path | None, n_train: int, n_test: int) -> Path:
    """DIR for the docs' commands: the first ``n_train`` / ``n_test`` images of MNIST and Fashion-MNIST
    (from the IDX files in ``source`` where present, else learnable stand-ins of the same shape) and
    CIFAR-10 python batches of stand-ins (5 train batches of ``n_train // 5``, one test batch)."""
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion-mnist"):
        (folder / name).mkdir(parents=True)
        for part, count in (("train", n_train), ("test", n_test)):
            stem = _IDX_NAMES[part]
            original = source / name / f"{stem}-images-idx3-ubyte.gz" if source else None
            if original is not None and original.is_file():
                x = read_idx(original, 3)[:count]
                y = read_idx(source / name / f"{stem}-labels-idx1-ubyte.gz", 1)[:count]
            else:
                x, y = _patterns(rng, count, (28, 28))
            _write_idx(folder / name / f"{stem}-images-idx3-ubyte", x)
            _write_idx(folder / name / f"{stem}-labels-idx1-ubyte", y)
    cifar = folder / "cifar-10-batches-py"
    cifar.mkdir()
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    for batch, count in [*((b, n_train // 5) for b in batches), ("test_batch", n_test)]:
        x, y = _patterns(rng, count, (3 * 32 * 32,))
        with (cifar / batch).open("wb") as file:
            pickle.dump({b"data": x, b"labels": [int(v) for v in y]}, file, protocol=2)
    return folder


# --- Running them -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """How the test runs one documented command.

    options: values that replace the command's own (or are added where it has none), so that it
    takes seconds: {"--epochs": "1"}; a value of None adds a flag, a tuple adds the option once per
    value (repeatable options: --data-arg). before: prepares the workspace first (placeholder files
    the docs assume exist). slow: a README step of minutes, run under ``-m slow`` with docs/'s.
    """

    options: dict[str, str | tuple[str, ...] | None] = field(default_factory=dict)
    before: Callable[[Path], None] | None = None
    slow: bool = False


@dataclass(frozen=True)
class Outcome:
    """A subprocess's exit code (None: killed at the timeout), its stdout and stderr together, and its
    wall-clock seconds (reported, never asserted on)."""

    code: int | None
    output: str
    seconds: float

    def failure(self) -> str | None:
        """Why the step failed (None when it did not): a timeout, a non-zero exit or a traceback in the output."""
        if self.code is None:
            return f"still running after {self.seconds:.0f} s: killed"
        if self.code != 0:
            return f"exit code {self.code}"
        if "Traceback" in self.output:
            return "a traceback in the output"
        return None


def with_options(argv: tuple[str, ...], options: dict[str, str | tuple[str, ...] | None]) -> list[str]:
    """``argv`` with each option of ``options`` given that value: replaced where argv has the option,
    appended where it has not (a None value: a flag; a tuple: the option appended once per value)."""
    words = list(argv)
    for option, value in options.items():
        if isinstance(value, tuple):
            words += [w for v in value for w in (option, v)]
        elif option in words:
            at = words.index(option)
            if value is not None:
                words[at + 1] = value
        else:
            words += [option] if value is None else [option, value]
    return words


def _expand(word: str, cwd: Path) -> list[str]:
    """A shell glob expanded in ``cwd`` as bash would (left as it is when nothing matches)."""
    if not any(c in word for c in "*?["):
        return [word]
    return sorted(str(p.relative_to(cwd)) for p in cwd.glob(word)) or [word]


def environment(extra: dict[str, str], cwd: Path) -> dict[str, str]:
    """The subprocess's environment: this one without PRUNESCOPE_DATA_DIR (every command names its data),
    the command's own variables, and PYTHONPATH ending in this checkout's src (never an installed copy)."""
    env = {k: v for k, v in os.environ.items() if k != "PRUNESCOPE_DATA_DIR"}
    env |= {k: v for k, v in extra.items() if k != "PYTHONPATH"}
    paths = [str(cwd / p) for p in extra.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT / "src")])
    env["COLUMNS"] = "160"  # rich's tables at a fixed width, whatever the terminal pytest runs in
    return env


def run_command(command: Command, run: Run, cwd: Path, placeholders: dict[str, str], timeout: float) -> Outcome:
    """``python -m prunescope ARGV`` in ``cwd``: the command's arguments with ``run.options`` applied,
    placeholders (DIR) filled and globs expanded."""
    argv = [placeholders.get(w, w) for w in with_options(command.argv, run.options)]
    argv = [word for w in argv for word in _expand(w, cwd)]
    extra = {k: placeholders.get(v, v) for k, v in command.env.items()}
    return _subprocess([sys.executable, "-m", "prunescope", *argv], cwd, environment(extra, cwd), timeout)


def run_snippet(code: str, cwd: Path, timeout: float) -> Outcome:
    """``code`` executed by a fresh Python in ``cwd`` (this checkout's src importable)."""
    return _subprocess([sys.executable, "-c", code], cwd, environment({}, cwd), timeout)


def _subprocess(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Outcome:
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        output = "".join(o.decode(errors="replace") if isinstance(o, bytes) else o or ""
                         for o in (expired.stdout, expired.stderr))
        return Outcome(None, output, time.perf_counter() - start)
    return Outcome(done.returncode, done.stdout + done.stderr, time.perf_counter() - start)


def replaced(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key of ``replacements`` replaced by its value; AssertionError naming a key that
    ``code`` does not contain (the snippet changed: the test's entry must follow it)."""
    for old, new in replacements.items():
        assert old in code, f"the snippet no longer contains {old!r}: update its entry in SNIPPETS"
        code = code.replace(old, new)
    return code
