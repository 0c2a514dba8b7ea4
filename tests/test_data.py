"""prunescope.data: real MNIST/Fashion-MNIST files, generated IDX/CIFAR files, digits, synthetic, factories."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunescope.data import (
    DATA_DIR_ENV,
    Dataset,
    Split,
    available_datasets,
    describe_dataset,
    load_dataset,
    load_from_spec,
)
from prunescope.data.idx import read_idx
from prunescope.errors import PrunescopeError, UsageError

# The MNIST files: where PRUNESCOPE_DATA_DIR points (as in CI), else ../shared/data next to the checkout.
SHARED_DATA = Path(os.environ.get("PRUNESCOPE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST IDX files not found in {SHARED_DATA / 'mnist'}",
)
needs_fashion = pytest.mark.skipif(
    not (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files not found in {SHARED_DATA / 'fashion-mnist'}",
)


def class_counts(*splits: Split) -> list[int]:
    return torch.cat([s.y for s in splits]).bincount(minlength=10).tolist()


def assert_usage_error(match: str, call, *args, **kwargs) -> str:
    """Run call, expect a one-line UsageError containing ``match``; return the message."""
    with pytest.raises(UsageError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert match in message
    return message


# ---------------------------------------------------------------- generated IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    header = np.array([0x0800 | array.ndim, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, *, gz: bool = True, n_train: int = 100, n_test: int = 20) -> dict[str, np.ndarray]:
    """Four MNIST-style files with 4x4 images, every class equally often; returns the arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


# ---------------------------------------------------------------- real MNIST / Fashion-MNIST


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", data_dir=SHARED_DATA)


@needs_mnist
def test_mnist_sizes_and_label_counts(mnist: Dataset) -> None:
    assert len(mnist.train) + len(mnist.val) == 60000
    assert len(mnist.test) == 10000
    assert class_counts(mnist.train, mnist.val) == MNIST_TRAIN
    assert class_counts(mnist.test) == MNIST_TEST
    assert mnist.train.x.shape == (len(mnist.train), 1, 28, 28)
    assert mnist.train.x.dtype == torch.float32 and mnist.train.y.dtype == torch.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10


@needs_mnist
def test_mnist_label_file_counts_via_reader() -> None:
    labels = read_idx(SHARED_DATA / "mnist" / "train-labels-idx1-ubyte.gz", 1)
    images = read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz", 3)
    assert np.bincount(labels).tolist() == MNIST_TRAIN
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8 and images.max() == 255


@needs_mnist
def test_mnist_val_is_stratified(mnist: Dataset) -> None:
    val = class_counts(mnist.val)
    assert len(mnist.val) == 6000
    for in_val, total in zip(val, MNIST_TRAIN, strict=True):
        assert abs(in_val - 0.1 * total) <= 1


@needs_mnist
def test_mnist_normalised_with_train_statistics(mnist: Dataset) -> None:
    pool = torch.cat([mnist.train.x, mnist.val.x]).double()
    assert abs(pool.mean().item()) < 1e-4 and abs(pool.std().item() - 1) < 1e-4
    # Background pixels map to -mean/std of the well-known MNIST statistics (0.1307, 0.3081).
    assert mnist.test.x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-3)


@needs_mnist
def test_mnist_split_is_seeded(mnist: Dataset) -> None:
    again = load_dataset("mnist", data_dir=SHARED_DATA, seed=0)
    other = load_dataset("mnist", data_dir=SHARED_DATA, seed=1)
    assert torch.equal(again.val.x, mnist.val.x) and torch.equal(again.train.y, mnist.train.y)
    assert not torch.equal(other.val.x, mnist.val.x)
    assert class_counts(other.val) == class_counts(mnist.val)  # same stratified sizes, other samples
    assert torch.equal(other.test.x, mnist.test.x)


@needs_mnist
def test_mnist_folder_itself_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    direct = load_dataset("mnist", data_dir=SHARED_DATA / "mnist", limit_train=50)
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    from_env = load_dataset("mnist", limit_train=50)
    assert torch.equal(direct.train.x, from_env.train.x)
    assert len(from_env.train) == 50
    for kept, total in zip(class_counts(from_env.train), MNIST_TRAIN, strict=True):
        assert abs(kept - 50 * total / 60000) <= 1
    assert from_env.spec["data_dir"] == str(SHARED_DATA.resolve())


@needs_fashion
def test_fashion_mnist_balanced_classes() -> None:
    ds = load_dataset("fashion-mnist", data_dir=SHARED_DATA)
    assert class_counts(ds.train, ds.val) == [6000] * 10
    assert class_counts(ds.test) == [1000] * 10
    assert class_counts(ds.val) == [600] * 10
    assert ds.input_shape == (1, 28, 28)


# ---------------------------------------------------------------- IDX reader on generated files


def test_raw_and_gzipped_idx_load_the_same(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "gz", gz=True)
    write_idx_set(tmp_path / "raw", gz=False)
    gz = load_dataset("mnist", data_dir=tmp_path / "gz")
    raw = load_dataset("mnist", data_dir=tmp_path / "raw")
    for part in ("train", "val", "test"):
        assert torch.equal(gz.split(part).x, raw.split(part).x)
        assert torch.equal(gz.split(part).y, raw.split(part).y)
    assert np.array_equal(read_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte", 3), arrays["t10k-images-idx3-ubyte"])
    assert gz.input_shape == (1, 4, 4) and (len(gz.train), len(gz.val), len(gz.test)) == (90, 10, 20)


def test_parent_folder_with_named_subfolder(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "fashion-mnist")
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path).test) == 20
    assert_usage_error("no train-images-idx3-ubyte[.gz] in", load_dataset, "mnist", data_dir=tmp_path)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    message = assert_usage_error("magic number 2051 is not 2049", load_dataset, "mnist", data_dir=tmp_path)
    assert str(labels) in message


def test_idx_truncated_payload(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    message = assert_usage_error("but the file holds 313", load_dataset, "mnist", data_dir=tmp_path)
    assert str(images) in message


def test_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    assert_usage_error("too short for an IDX header", read_idx, path, 3)


def test_idx_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 2])
    assert str(images) in assert_usage_error("gzip", load_dataset, "mnist", data_dir=tmp_path)
    images.write_bytes(good[:10] + b"garbage" * 20)
    assert str(images) in assert_usage_error("gzip", load_dataset, "mnist", data_dir=tmp_path)


def test_idx_image_label_count_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(99) % 10))
    message = assert_usage_error("has 100 images but", load_dataset, "mnist", data_dir=tmp_path)
    assert "train-labels-idx1-ubyte has 99 labels" in message


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(20) % 13))
    assert "t10k-labels-idx1-ubyte" in assert_usage_error("0..9, found 0..12", load_dataset, "mnist", data_dir=tmp_path)


def test_idx_missing_file_and_empty_folder(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "set")
    (tmp_path / "set" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_usage_error("no t10k-labels-idx1-ubyte[.gz] in", load_dataset, "mnist", data_dir=tmp_path / "set")
    (tmp_path / "empty").mkdir()
    message = assert_usage_error(
        "no train-images-idx3-ubyte[.gz] in", load_dataset, "mnist", data_dir=tmp_path / "empty"
    )
    assert "--data-dir" in message and DATA_DIR_ENV in message


def test_missing_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert_usage_error("no data folder given", load_dataset, "mnist")
    assert_usage_error("does not exist", load_dataset, "mnist", data_dir=tmp_path / "nope")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nope"))
    assert_usage_error(f"(from {DATA_DIR_ENV}) does not exist", load_dataset, "cifar10")


# ---------------------------------------------------------------- CIFAR-10 pickles


def write_cifar(folder: Path, *, n: int = 20, protocol: int = 2, numpy1_names: bool = False) -> None:
    """Six CIFAR-format batches of n images each (every class equally often)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for index, batch in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        content = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [(i + index) % 10 for i in range(n)],
        }
        data = pickle.dumps(content, protocol=protocol)
        if numpy1_names:  # what the original Python 2 / numpy 1 files name
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / batch).write_bytes(data)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def test_cifar_loads_and_normalises_per_channel(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 20)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert class_counts(ds.val) == [2] * 10
    pool = torch.cat([ds.train.x, ds.val.x]).double()
    assert torch.allclose(pool.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(pool.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize(("protocol", "numpy1_names"), [(2, True), (5, False)])
def test_cifar_pickle_variants_load_the_same(tmp_path: Path, protocol: int, numpy1_names: bool) -> None:
    write_cifar(tmp_path / "a")
    write_cifar(tmp_path / "b", protocol=protocol, numpy1_names=numpy1_names)
    a, b = (load_dataset("cifar10", data_dir=tmp_path / name) for name in "ab")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_cifar_malicious_pickle_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    Evil.marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    message = assert_usage_error("refusing to load", load_dataset, "cifar10", data_dir=tmp_path)
    assert "data_batch_2" in message and "system" in message
    assert not Evil.marker.exists()


def test_cifar_missing_batch_and_bad_content(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    assert_usage_error("no data_batch_3 in", load_dataset, "cifar10", data_dir=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    assert_usage_error("data must be uint8 of shape (N, 3072)", load_dataset, "cifar10", data_dir=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"labels": [0]}))
    assert_usage_error("lacks data", load_dataset, "cifar10", data_dir=tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    assert "data_batch_3" in assert_usage_error(
        "not a readable CIFAR-10 batch", load_dataset, "cifar10", data_dir=tmp_path
    )


# ---------------------------------------------------------------- digits


def test_digits_splits_cover_the_data_once() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", seed=5)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.input_shape == (1, 8, 8) and ds.train.x.dtype == torch.float32
    x = torch.cat([ds.train.x, ds.val.x, ds.test.x]).flatten(1).numpy()
    # Undo the affine normalisation: pixels take 17 equally spaced values, the lowest being 0.
    levels = np.unique(x.round(4))
    raw = np.rint((x - levels[0]) / (levels[1] - levels[0]))
    y = torch.cat([ds.train.y, ds.val.y, ds.test.y]).numpy()
    original = load_digits()
    rows = np.column_stack([raw, y])
    expected = np.column_stack([original.data, original.target])
    assert np.array_equal(rows[np.lexsort(rows.T)], expected[np.lexsort(expected.T)])


def test_digits_test_split_fixed_and_stratified() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.y, b.val.y) or not torch.equal(a.val.x, b.val.x)
    totals = class_counts(a.train, a.val, a.test)
    for in_test, total in zip(class_counts(a.test), totals, strict=True):
        assert abs(in_test - 0.2 * total) <= 1


def test_limit_train_is_stratified_and_leaves_val_alone() -> None:
    full, limited = load_dataset("digits"), load_dataset("digits", limit_train="100")
    assert len(limited.train) == 100 and class_counts(limited.train) == [10] * 10
    assert torch.equal(limited.val.x, full.val.x) and torch.equal(limited.test.x, full.test.x)
    assert limited.spec["limit_train"] == 100
    assert_usage_error("smaller than the number of classes (10)", load_dataset, "digits", limit_train=5)


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_learnability() -> None:
    ds = load_dataset("synthetic", n_train=500, n_test=100, input_shape="3x4x4", num_classes=5, noise=1.0)
    assert ds.train.x.shape == (450, 3, 4, 4) and len(ds.val) == 50 and len(ds.test) == 100
    assert ds.input_shape == (3, 4, 4) and ds.num_classes == 5
    again = load_dataset("synthetic", n_train=500, n_test=100, input_shape=[3, 4, 4], num_classes=5)
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    other_seed = load_dataset("synthetic", n_train=500, n_test=100, input_shape=(3, 4, 4), num_classes=5, seed=1)
    assert torch.equal(other_seed.test.x, ds.test.x) and not torch.equal(other_seed.val.x, ds.val.x)
    other_data = load_dataset("synthetic", n_train=500, n_test=100, input_shape="3x4x4", num_classes=5, data_seed=1)
    assert not torch.equal(other_data.test.x, ds.test.x)
    # Nearest class mean (fitted on train) must classify test well: the task is learnable.
    means = torch.stack([ds.train.x[ds.train.y == c].mean(0) for c in range(5)]).flatten(1)
    predicted = torch.cdist(ds.test.x.flatten(1), means).argmin(1)
    assert (predicted == ds.test.y).float().mean() > 0.9


def test_synthetic_bad_options() -> None:
    assert_usage_error("unknown option colour", load_dataset, "synthetic", colour=1)
    assert_usage_error("synthetic: input_shape must be", load_dataset, "synthetic", input_shape="")
    assert_usage_error(
        "synthetic: n_train must be an integer >= 1, got 'many'", load_dataset, "synthetic", n_train="many"
    )
    assert_usage_error("synthetic: noise must be a number >= 0.0", load_dataset, "synthetic", noise=-1)


# ---------------------------------------------------------------- arguments, spec, listing


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "abc", float("nan")])
def test_bad_val_fraction(fraction: object) -> None:
    assert_usage_error("val_fraction must be a number > 0.0 and < 1.0", load_dataset, "digits", val_fraction=fraction)


def test_bad_names_seed_and_options() -> None:
    assert_usage_error("unknown dataset 'imagenet'; use one of digits, mnist", load_dataset, "imagenet")
    assert_usage_error("seed must be an integer >= 0", load_dataset, "digits", seed=-1)
    message = assert_usage_error("digits: unknown option n_train", load_dataset, "digits", n_train=5)
    assert "limit_train" in message
    assert_usage_error("val_fraction=0.001", load_dataset, "digits", val_fraction=0.001)


def test_spec_rebuilds_the_dataset() -> None:
    ds = load_dataset("Synthetic", val_fraction=0.2, seed=3, n_train=200, input_shape=(1, 4, 4), limit_train=40)
    assert json.loads(json.dumps(ds.spec)) == ds.spec
    assert ds.spec == {
        "name": "synthetic",
        "val_fraction": 0.2,
        "seed": 3,
        "n_train": 200,
        "input_shape": [1, 4, 4],
        "limit_train": 40,
    }
    rebuilt = load_from_spec(ds.spec)
    for part in ("train", "val", "test"):
        assert torch.equal(rebuilt.split(part).x, ds.split(part).x)


def test_spec_data_dir_explicit_wins_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "a")
    spec = load_dataset("mnist", data_dir=tmp_path / "a").spec
    assert spec["data_dir"] == str((tmp_path / "a").resolve())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "a" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_from_spec(spec, data_dir=tmp_path / "b").spec["data_dir"] == str((tmp_path / "b").resolve())
    assert_usage_error("no t10k-labels-idx1-ubyte[.gz]", load_from_spec, spec)
    shutil.rmtree(tmp_path / "a")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "b"))
    assert len(load_from_spec(spec).test) == 20  # stored folder gone: the env var takes over


def test_available_and_describe() -> None:
    infos = {info.name: info for info in available_datasets()}
    assert set(infos) == {"digits", "mnist", "fashion-mnist", "cifar10", "synthetic", "saved", "python-source"}
    assert infos["mnist"].needs_data_dir and not infos["digits"].needs_data_dir
    summary = describe_dataset(load_dataset("digits"))
    assert summary == {
        "name": "digits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "train": 1293,
        "val": 144,
        "test": 360,
    }
    json.dumps(summary)


# ---------------------------------------------------------------- user factories

FACTORY_MODULE = """
import numpy as np
import torch
from prunescope.data import Dataset, Split


def pairs(n=60, classes=3):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    y = np.arange(n) % classes
    return {"train": (x, y), "test": (torch.from_numpy(x[:9]), torch.from_numpy(y[:9]))}


def three(n=30):
    x, y = torch.randn(n, 2, 3), torch.arange(n) % 2
    return (x, y), (x[:4], y[:4]), (x[:6], y[:6])


def full():
    s = Split(torch.zeros(4, 5), torch.tensor([0, 1, 2, 3]))
    return Dataset("mine", s, s, s, (5,), 4)


def bad_labels():
    return {"train": (np.zeros((20, 2)), np.arange(20) % 4), "test": (np.zeros((4, 2)), np.arange(4)), "num_classes": 3}


def broken():
    raise RuntimeError("disk on fire")


not_callable = 3
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "psdata_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "psdata_factories", raising=False)
    return "psdata_factories"


def test_factory_dict_carves_val(factories: str) -> None:
    ds = load_dataset(f"{factories}:pairs", n=100, limit_train=30)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 9)
    assert ds.input_shape == (4,) and ds.num_classes == 3
    assert ds.test.x.dtype == torch.float32 and ds.test.y.dtype == torch.int64
    assert ds.spec == {"name": f"{factories}:pairs", "val_fraction": 0.1, "seed": 0, "n": 100, "limit_train": 30}
    assert torch.equal(load_from_spec(ds.spec).val.x, ds.val.x)


def test_factory_tuple_and_dataset(factories: str) -> None:
    three = load_dataset(f"{factories}:three")
    assert (len(three.train), len(three.val), len(three.test)) == (30, 4, 6)
    assert three.input_shape == (2, 3) and three.num_classes == 2
    full = load_dataset(f"{factories}:full")
    assert full.name == "mine" and full.num_classes == 4 and full.spec["name"] == f"{factories}:full"


def test_factory_errors(factories: str) -> None:
    assert_usage_error("cannot import dataset factory 'no_such_module_xyz:f'", load_dataset, "no_such_module_xyz:f")
    assert_usage_error("has no attribute 'missing'", load_dataset, f"{factories}:missing")
    assert_usage_error("is not callable", load_dataset, f"{factories}:not_callable")
    assert_usage_error("write it as package.module:function", load_dataset, "a:b:c")
    assert_usage_error("does not accept these options", load_dataset, f"{factories}:pairs", colour="red")
    assert_usage_error("labels must lie in 0..2, found 0..3", load_dataset, f"{factories}:bad_labels")
    with pytest.raises(PrunescopeError, match="disk on fire") as caught:
        load_dataset(f"{factories}:broken")
    assert not isinstance(caught.value, UsageError)
