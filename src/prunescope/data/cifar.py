"""CIFAR-10 "python version" batches, read with an unpickler that can only build plain arrays."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from prunescope.data.build import RawData, check_labels
from prunescope.data.messages import one_line
from prunescope.errors import UsageError

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_SUBFOLDERS = ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py")
_HINT = (
    "pass --data-dir pointing at the folder with the CIFAR-10 python batches "
    "(cifar-10-batches-py) or set PRUNESCOPE_DATA_DIR"
)

# The functions numpy's pickles name, taken from numpy itself so numpy 1 and 2 both work.
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
# Every global a CIFAR batch may name (numpy 1 and 2 spellings). Anything else, such as
# os.system, is refused: a pickle can otherwise run arbitrary code while loading.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}, which a CIFAR-10 batch never contains"
            ) from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: x uint8 (N, 3, 32, 32), y int64 (N,). UsageError naming the file if bad."""
    try:
        with path.open("rb") as file:
            # Batches were pickled by Python 2; "bytes" keeps their str keys as bytes.
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {one_line(error)}; replace the file") from error
    except Exception as error:  # any failure inside the pickle machinery means a bad file
        raise UsageError(f"{path}: not a readable CIFAR-10 batch ({one_line(error)})") from error
    if not isinstance(batch, dict):
        raise UsageError(f"{path}: a CIFAR-10 batch is a dict, found {type(batch).__name__}")
    fields = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = {"data", "labels"} - fields.keys()
    if missing:
        raise UsageError(f"{path}: CIFAR-10 batch lacks {' and '.join(sorted(missing))}; download the file again")
    x = fields["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        found = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise UsageError(f"{path}: data must be uint8 of shape (N, 3072), found {found}")
    try:
        y = np.asarray(fields["labels"], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path}: labels are not integers ({one_line(error)})") from error
    if y.shape != (len(x),):
        raise UsageError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    check_labels(y, 10, str(path))
    return x.reshape(-1, 3, 32, 32), y


def read_cifar10(data_dir: Path | None) -> RawData:
    """data_batch_1..5 (train, 50,000) and test_batch (10,000); x uint8 (N, 3, 32, 32)."""
    folder = _locate(data_dir)
    # Find every batch before reading any, so a missing one is reported at once.
    *train_files, test_file = (_find(folder, batch) for batch in (*_TRAIN_BATCHES, _TEST_BATCH))
    train = [read_batch(path) for path in train_files]
    test = read_batch(test_file)
    return RawData(
        train=(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        test=test,
        num_classes=10,
        normalise="channel",
    )


def _locate(data_dir: Path | None) -> Path:
    """data_dir or the known subfolder of it that holds data_batch_1."""
    if data_dir is None:
        raise UsageError(f"cifar10: no data folder given; {_HINT}")
    for folder in (data_dir, *(data_dir / sub for sub in _SUBFOLDERS)):
        if (folder / _TRAIN_BATCHES[0]).is_file():
            return folder
    if any(data_dir.glob("cifar-10-python.tar*")):
        raise UsageError(
            f"cifar10: {data_dir} holds the CIFAR-10 archive but not its batches; "
            f"extract it there (tar xzf cifar-10-python.tar.gz -C {data_dir})"
        )
    raise UsageError(
        f"cifar10: no {_TRAIN_BATCHES[0]} in {data_dir} (nor in its "
        f"{' or '.join(s + '/' for s in _SUBFOLDERS)} subfolder); {_HINT}"
    )


def _find(folder: Path, batch: str) -> Path:
    path = folder / batch
    if not path.is_file():
        raise UsageError(f"cifar10: no {batch} in {folder}; {_HINT}")
    return path
