"""Text for language models: documents → tokens → fixed-length blocks of next-token prediction.

``--data text:PATH`` reads a text file (documents separated by blank lines) or a folder of
files (one document each, ``suffixes`` chosen), or a folder saved by Hugging Face
``datasets.save_to_disk`` (its ``text`` column; its own splits when it has them). The
built-in ``python-source`` is the Python standard library's own ``.py`` files: a corpus every
machine with Python already has, the offline default for language models.

Documents, not blocks, are shuffled (seeded) and dealt to test, val and train, so that no
document is read in two splits. Each split's documents are tokenised, joined (the
tokenizer's end-of-text token between documents, when it has one) and cut into blocks of
``block + 1`` tokens taken every ``block`` tokens: ``x`` the first ``block`` tokens and ``y``
the next token at each position, both int64 (N, block). The tail shorter than a block is
dropped.

Tokenizers: ``bytes`` (UTF-8 bytes, 256 ids; no download, no vocabulary file) or a local
directory holding ``tokenizer.json`` (read with ``tokenizers``) or any tokenizer that
``transformers.AutoTokenizer`` loads with ``local_files_only=True``. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import random
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunescope.data.options import as_float, as_int
from prunescope.data.types import Dataset, Split
from prunescope.errors import UsageError

PREFIX = "text:"
DEFAULT_SUFFIXES = (".txt", ".md", ".rst", ".py")
BYTES = "bytes"


def is_text(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class Tokenizer:
    """``encode(text) -> ids``, the vocabulary size and the end-of-text id (None: documents are joined bare)."""

    name: str
    encode: Callable[[str], list[int]]
    vocab_size: int
    eos: int | None


def load_tokenizer(name: str) -> Tokenizer:
    """``bytes`` or a local tokenizer directory; a one-line error for anything else."""
    if name == BYTES:
        return Tokenizer(BYTES, lambda text: list(text.encode("utf-8")), 256, None)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise UsageError(f"tokenizer {name!r} is not a directory: give a local tokenizer folder (tokenizer.json) or "
                         "'bytes'; prunescope never downloads one")
    if (folder / "tokenizer.json").is_file() and importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer as Fast

        fast = Fast.from_file(str(folder / "tokenizer.json"))
        eos = next((fast.token_to_id(t) for t in ("<|endoftext|>", "</s>", "<eos>") if fast.token_to_id(t) is not None),
                   None)
        return Tokenizer(str(folder), lambda text: fast.encode(text).ids, fast.get_vocab_size(), eos)
    if importlib.util.find_spec("transformers") is None:
        raise UsageError(f"tokenizer folder {folder} has no tokenizer.json readable without transformers: "
                         "pip install 'prunescope[hf]'")
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # transformers raises OSError / ValueError with long texts
        raise UsageError(f"tokenizer folder {folder} could not be loaded: {str(error).splitlines()[0]}") from None
    return Tokenizer(str(folder), lambda text: loaded(text)["input_ids"], len(loaded), loaded.eos_token_id)


def read_documents(
    path: Path, suffixes: Sequence[str], skip: Sequence[str] = ()
) -> tuple[list[str], dict[str, list[str]] | None]:
    """The documents under ``path``, in a fixed order, and the splits of a saved ``datasets`` folder (or None).

    ``skip``: folder names whose files are left out (the standard library's ``site-packages`` and tests)."""
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return [], _saved_datasets(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        return [d for d in text.split("\n\n") if d.strip()], None
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes
                       and not set(skip) & set(p.relative_to(path).parts[:-1]))
        documents = [p.read_text(encoding="utf-8", errors="replace") for p in files]
        return [d for d in documents if d.strip()], None
    raise UsageError(f"text data {path} is neither a file nor a folder: give a text file, a folder of "
                     f"{'/'.join(suffixes)} files or a datasets.save_to_disk folder")


def _saved_datasets(path: Path) -> dict[str, list[str]]:
    if importlib.util.find_spec("datasets") is None:
        raise UsageError(f"{path} was saved by Hugging Face datasets: pip install datasets to read it")
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(str(path))
    parts = saved if isinstance(saved, DatasetDict) else {"train": saved}
    renamed = {"validation": "val"}
    out = {}
    for split, table in parts.items():
        if "text" not in table.column_names:
            raise UsageError(f"{path} split {split} has no 'text' column (columns: {', '.join(table.column_names)})")
        out[renamed.get(split, split)] = [t for t in table["text"] if t and t.strip()]
    return out


def blocks(documents: Sequence[str], tokenizer: Tokenizer, block: int, where: str) -> Split:
    """``documents`` tokenised, joined and cut into (N, block) inputs and next-token labels."""
    ids: list[int] = []
    for i, document in enumerate(documents):
        if i and tokenizer.eos is not None:
            ids.append(tokenizer.eos)
        ids.extend(tokenizer.encode(document))
    count = (len(ids) - 1) // block
    if count < 1:
        raise UsageError(f"{where}: {len(ids)} tokens are fewer than one block of {block} + 1: give more text, "
                         "a smaller --data-arg block=N or a smaller val/test share")
    tokens = torch.tensor(ids[: count * block + 1], dtype=torch.int64)
    x = tokens[:-1].view(count, block)
    y = tokens[1:].view(count, block)
    return Split(x.clone(), y.clone())


def _deal(documents: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Documents shuffled with ``seed`` and dealt to test, val, train (at least one each)."""
    if len(documents) < 3:
        raise UsageError(f"{len(documents)} documents cannot be split into train, val and test by document: give "
                         "at least 3 (a folder of files, or a file with blank lines between documents)")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    if n_test + n_val >= len(order):
        raise UsageError(f"val and test shares leave no training document of {len(documents)}: lower them")
    pick = lambda part: [documents[i] for i in part]  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test : n_test + n_val]),
            "train": pick(order[n_test + n_val :])}


def _limited(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return Split(split.x[keep], split.y[keep])


def load_text(
    name: str,
    path: str | Path,
    *,
    tokenizer: str = BYTES,
    block: Any = 128,
    val_fraction: float = 0.1,
    test_fraction: Any = 0.1,
    max_documents: Any = None,
    suffixes: Sequence[str] | str = DEFAULT_SUFFIXES,
    seed: int = 0,
    limit_train: int | None = None,
    limit_val: int | None = None,
    spec: dict[str, Any],
    skip: Sequence[str] = (),
) -> Dataset:
    """The language-model dataset of the documents at ``path`` (see the module docstring).

    ``block``: tokens per sequence; ``max_documents``: use the first this many documents in
    path order (before shuffling), to keep a large corpus quick; ``limit_train`` /
    ``limit_val``: seeded subsets of that many sequences.
    """
    block = as_int("block", block, minimum=1)
    test_fraction = as_float("test_fraction", test_fraction, low=0.0, high=1.0, open_low=True)
    suffixes = tuple(s.strip() for s in suffixes.split(",")) if isinstance(suffixes, str) else tuple(suffixes)
    documents, saved = read_documents(Path(path).expanduser(), suffixes, skip)
    if max_documents is not None:
        documents = documents[: as_int("max_documents", max_documents, minimum=3)]
    parts = saved if saved is not None and {"train", "val", "test"} <= saved.keys() else None
    if parts is None:
        parts = _deal(documents or (saved or {}).get("train", []), val_fraction, test_fraction, seed)
    words = load_tokenizer(tokenizer)
    splits = {split: blocks(parts[split], words, block, f"{name} {split} split") for split in ("train", "val", "test")}
    vocabulary = max(words.vocab_size, *(int(s.y.max()) + 1 for s in splits.values()))
    return Dataset(
        name=name,
        train=_limited(splits["train"], limit_train, seed),
        val=_limited(splits["val"], limit_val, seed),
        test=splits["test"],
        input_shape=(block,),
        num_classes=vocabulary,
        spec=spec,
    )


PYTHON_SOURCE = "python-source"
# Left out of the standard library corpus: installed packages, and test suites full of deliberately odd code.
PYTHON_SOURCE_SKIP = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3")


def python_source() -> Path:
    """The folder of the running Python's standard library (its ``.py`` files are the built-in corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])
