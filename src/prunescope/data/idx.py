"""MNIST-style IDX files (raw or gzipped): one validating reader, and the MNIST/Fashion-MNIST source."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from prunescope.data.build import RawData, check_labels
from prunescope.data.messages import one_line
from prunescope.errors import UsageError

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST-style files use

# Subfolders of a data folder that may hold the files: ours, then torchvision's layout.
_SUBFOLDERS = {"mnist": ("mnist", "MNIST/raw"), "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw")}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions (1: labels, 3: images).

    Returns uint8 of shape (count, *dims). Gzip is detected from the content, not the name.
    Raises UsageError naming the file for unreadable, corrupt, truncated or mistyped files.
    """
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except OSError as error:  # gzip.BadGzipFile is an OSError too
        raise UsageError(f"cannot read {path}: {one_line(error)}; replace the file") from error
    except (EOFError, zlib.error) as error:
        raise UsageError(
            f"{path}: corrupt or truncated gzip data ({one_line(error)}); download the file again"
        ) from error
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise UsageError(
            f"{path}: {len(data)} bytes is too short for an IDX header ({header_size} bytes); download the file again"
        )
    magic, *dims = (int(v) for v in np.frombuffer(data, ">u4", count=1 + ndim))
    expected = _UBYTE << 8 | ndim
    if magic != expected:
        raise UsageError(
            f"{path}: magic number {magic} is not {expected} (unsigned-byte IDX with "
            f"{ndim} dimension{'s' if ndim > 1 else ''}); check this is the right file"
        )
    payload = len(data) - header_size
    if payload != math.prod(dims):
        raise UsageError(
            f"{path}: header announces {' x '.join(map(str, dims))} = {math.prod(dims)} "
            f"bytes of data but the file holds {payload}; download the file again"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(dims)


def read_mnist_like(name: str, data_dir: Path | None) -> RawData:
    """The four IDX files of ``name`` (mnist, fashion-mnist): x uint8 (N, 1, 28, 28), y uint8 (N,)."""
    folder = _locate(data_dir, name)
    # Find all four files before reading any, so a missing one is reported at once.
    files = {
        part: (_find(folder, f"{part}-images-idx3-ubyte", name), _find(folder, f"{part}-labels-idx1-ubyte", name))
        for part in ("train", "t10k")
    }
    pairs = []
    for image_file, label_file in files.values():
        x, y = read_idx(image_file, 3), read_idx(label_file, 1)
        if len(x) != len(y):
            raise UsageError(
                f"{name}: {image_file} has {len(x)} images but {label_file} has "
                f"{len(y)} labels; the files do not belong together"
            )
        check_labels(y, 10, str(label_file))
        pairs.append((x[:, None], y))
    (train_x, _), (test_x, _) = pairs
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UsageError(
            f"{name}: train images are {train_x.shape[2]}x{train_x.shape[3]} but test images "
            f"are {test_x.shape[2]}x{test_x.shape[3]}; the files do not belong together"
        )
    return RawData(train=pairs[0], test=pairs[1], num_classes=10, normalise="global")


def _hint(name: str) -> str:
    return f"pass --data-dir pointing at the folder with the {_TITLES[name]} IDX files or set PRUNESCOPE_DATA_DIR"


def _locate(data_dir: Path | None, name: str) -> Path:
    """The folder holding the files: data_dir itself or one of its known subfolders."""
    if data_dir is None:
        raise UsageError(f"{name}: no data folder given; {_hint(name)}")
    for folder in (data_dir, *(data_dir / sub for sub in _SUBFOLDERS[name])):
        if any((folder / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
            return folder
    subs = " or ".join(f"{sub}/" for sub in _SUBFOLDERS[name])
    raise UsageError(
        f"{name}: no train-images-idx3-ubyte[.gz] in {data_dir} (nor in its {subs} subfolder); {_hint(name)}"
    )


def _find(folder: Path, stem: str, name: str) -> Path:
    """``stem`` or ``stem.gz`` in folder; the uncompressed file wins because it loads faster."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{name}: no {stem}[.gz] in {folder}; {_hint(name)}")
