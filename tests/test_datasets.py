"""Tests for lth_keras.datasets: sources in their original formats, splits, the input pipeline.

Everything runs offline on data the tests write themselves, plus Debian's
Fashion-MNIST package where it is installed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gzip
import hashlib
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lth_keras.datasets import (
    DataError,
    ImageDataset,
    MissingDataError,
    Split,
    carve_validation,
    check_every_class,
    load_source,
    network_available,
    stratified_split,
    subset_fraction,
)
from lth_keras.datasets import sources

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No known local copies, no TFDS dirs, no network: only what a test provides."""
    monkeypatch.setattr(sources, "KNOWN_LOCAL_ROOTS", ())
    monkeypatch.setattr(sources, "TFDS_DATA_DIRS", ())
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setenv(sources.NO_NETWORK_ENV, "1")


# ---------------------------------------------------------------------------
# Writing tiny datasets in the original formats.
#
# Example g of a split has pixel value (g + 3c + 5y + 7x) % 256 at (y, x, c),
# except that (0, 0, R) and (0, 1, R) hold g % 256 and g // 256, so a loaded
# image tells which example it is and every pixel can be checked.
# ---------------------------------------------------------------------------

def pattern(g, size=32, channels=3):
    c, y, x = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
    img = ((g + 3 * c + 5 * y + 7 * x) % 256).astype(np.uint8)  # (C, H, W)
    img[0, 0, 0], img[0, 0, 1] = g % 256, g // 256
    return img


def cifar_rows(n, start=0):
    """(n, 3072) uint8 rows in CIFAR's layout: 1024 R, 1024 G, 1024 B, each row-major 32x32."""
    return np.stack([pattern(start + g).reshape(-1) for g in range(n)])


def check_images(images, labels, expected_labels, channels=3):
    """Every image is the pattern of the example it encodes, with that example's label."""
    for img, label in zip(images, labels):
        g = int(img[0, 0, 0]) + 256 * int(img[0, 1, 0])
        np.testing.assert_array_equal(img, pattern(g, img.shape[0], channels).transpose(1, 2, 0))
        assert label == expected_labels[g]


def _tar_gz(folder: Path, archive: Path):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def write_cifar10_python(root: Path, n_train=100, n_test=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch = n_train // 5
    for b in range(5):
        g = np.arange(b * per_batch, (b + 1) * per_batch)
        # Bytes keys, as the original Python 2 pickles load with encoding="bytes".
        batch = {b"batch_label": b"training batch", b"labels": [int(i % 10) for i in g],
                 b"data": cifar_rows(per_batch, b * per_batch), b"filenames": [b"x.png"] * per_batch}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"labels": [i % 10 for i in range(n_test)], b"data": cifar_rows(n_test)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [n.encode() for n in sources.CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar10_binary(root: Path, n_train=100, n_test=20):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    per_batch = n_train // 5

    def records(n, start):
        labels = (np.arange(start, start + n) % 10).astype(np.uint8)
        return np.concatenate([labels[:, None], cifar_rows(n, start)], axis=1).tobytes()

    for b in range(5):
        (folder / f"data_batch_{b + 1}.bin").write_bytes(records(per_batch, b * per_batch))
    (folder / "test_batch.bin").write_bytes(records(n_test, 0))
    (folder / "batches.meta.txt").write_text("\n".join(sources.CIFAR10_CLASSES) + "\n\n")
    return folder


def write_cifar100_python(root: Path, n_train=1000, n_test=100):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % 100 for i in range(n)]
        data = {b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": cifar_rows(n)}
        (folder / name).write_bytes(pickle.dumps(data, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in sources.CIFAR100_CLASSES],
            b"coarse_label_names": [b"c%d" % i for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar100_binary(root: Path, n_train=1000, n_test=100):
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = (np.arange(n) % 100).astype(np.uint8)
        # Two label bytes, coarse then fine: the coarse one must be ignored.
        (folder / f"{name}.bin").write_bytes(np.concatenate([(fine // 5)[:, None], fine[:, None], cifar_rows(n)], 1).tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(sources.CIFAR100_CLASSES) + "\n")
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.tobytes()


def write_fashion(folder: Path, n_train=100, n_test=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.stack([pattern(g, 28, 1)[0] for g in range(n)])
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}"
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)
    return folder


CIFAR_WRITERS = {
    ("cifar10", "python"): write_cifar10_python,
    ("cifar10", "binary"): write_cifar10_binary,
    ("cifar100", "python"): write_cifar100_python,
    ("cifar100", "binary"): write_cifar100_binary,
}
ARCHIVE_NAMES = {
    ("cifar10", "python"): "cifar-10-python.tar.gz",
    ("cifar10", "binary"): "cifar-10-binary.tar.gz",
    ("cifar100", "python"): "cifar-100-python.tar.gz",
    ("cifar100", "binary"): "cifar-100-binary.tar.gz",
}


def check_source(ds, n_classes, n_train, n_test, channels=3):
    """Sizes, stratification, every pixel and label, and that train + val is the original train."""
    per_class_val = n_train // n_classes // 10
    assert ds.num_classes == n_classes
    assert (len(ds.train), len(ds.val), len(ds.test)) == (n_train - n_classes * per_class_val, n_classes * per_class_val, n_test)
    assert np.all(np.bincount(ds.val.labels, minlength=n_classes) == per_class_val)
    expected = lambda n: np.arange(n) % n_classes  # noqa: E731
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
    check_images(ds.train.images, ds.train.labels, expected(n_train), channels)
    check_images(ds.val.images, ds.val.labels, expected(n_train), channels)
    check_images(ds.test.images, ds.test.labels, expected(n_test), channels)
    ids = lambda s: set(s.images[:, 0, 0, 0].astype(int) + 256 * s.images[:, 0, 1, 0].astype(int))  # noqa: E731
    assert ids(ds.train) | ids(ds.val) == set(range(n_train)) and not ids(ds.train) & ids(ds.val)
    # The test split keeps its original order.
    assert ids(ds.test) == set(range(n_test))
    assert list(ds.test.labels) == list(expected(n_test))


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("source,form", sorted(CIFAR_WRITERS))
@pytest.mark.parametrize("packed", ["extracted", "tar.gz"])
def test_cifar_original_formats(tmp_path, source, form, packed):
    work = tmp_path / "work"
    folder = CIFAR_WRITERS[source, form](work)
    data_dir = tmp_path / "data"
    if packed == "tar.gz":
        data_dir.mkdir()
        _tar_gz(folder, data_dir / ARCHIVE_NAMES[source, form])
    else:
        # Extracted folders are also found under data_dir/<name>/.
        (data_dir / source).mkdir(parents=True)
        folder.rename(data_dir / source / folder.name)
    ds = load_source(source, data_dir=str(data_dir), seed=3)
    n_train, n_test = (100, 20) if source == "cifar10" else (1000, 100)
    check_source(ds, 10 if source == "cifar10" else 100, n_train, n_test)
    # A known pixel, spelled out: test image 5, row 2, column 3, green channel.
    assert ds.test.images[5, 2, 3, 1] == (5 + 3 * 1 + 5 * 2 + 7 * 3) % 256
    expected_names = sources.CIFAR10_CLASSES if source == "cifar10" else sources.CIFAR100_CLASSES
    assert ds.class_names == expected_names


def test_cifar_files_directly_in_data_dir_and_keras3_cache_layout(tmp_path, monkeypatch):
    folder = write_cifar10_python(tmp_path / "tmp")
    for f in folder.iterdir():  # files straight in data_dir
        f.rename(tmp_path / f.name)
    check_source(load_source("cifar10", data_dir=str(tmp_path)), 10, 100, 20)
    # Keras 3 caches the archive as ~/.keras/datasets/cifar-10-batches-py-target_archive.
    keras_cache = tmp_path / "keras"
    keras_cache.mkdir()
    _tar_gz(write_cifar10_binary(tmp_path / "bin"), keras_cache / "cifar-10-batches-py-target_archive")
    with pytest.raises(DataError, match="lacks data_batch_1"):  # a binary tar under the python name
        sources._find_original("cifar10", [str(keras_cache)])
    (keras_cache / "cifar-10-batches-py-target_archive").unlink()
    _tar_gz(write_cifar10_python(tmp_path / "py2"), keras_cache / "cifar-10-batches-py-target_archive")
    monkeypatch.setattr(sources, "KNOWN_LOCAL_ROOTS", (str(keras_cache),))
    check_source(load_source("cifar10"), 10, 100, 20)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path, compress):
    write_fashion(tmp_path / ("fashion_mnist" if compress else "fashion-mnist"), compress=compress)
    ds = load_source("fashion_mnist", data_dir=str(tmp_path))
    check_source(ds, 10, 100, 20, channels=1)
    assert ds.train.images.shape[1:] == (28, 28, 1)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("version", ["default", "1.0.0"])
def test_prepared_tfds_copy_is_read_offline(tmp_path, version):
    # "1.0.0" is not the installed code's version: it is read with builder_from_directory.
    tfds = pytest.importorskip("tensorflow_datasets")
    features = tfds.builder("cifar10").info.features
    rows = cifar_rows(120).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    def examples(ids):
        return [(f"k{g}", {"id": f"k{g}", "image": rows[g], "label": g % 10}) for g in ids]

    tfds.dataset_builders.store_as_tfds_dataset(
        name="cifar10", version=str(tfds.builder("cifar10").version) if version == "default" else version, features=features,
        split_datasets={"train": examples(range(100)), "test": examples(range(20))}, data_dir=str(tmp_path))
    ds = load_source("cifar10", data_dir=str(tmp_path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 20)
    assert ds.class_names == sources.CIFAR10_CLASSES  # numeric TFDS names replaced by the standard ones
    check_images(ds.val.images, ds.val.labels, np.arange(100) % 10)


def test_missing_data_fails_fast_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(MissingDataError) as info:
        load_source("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "--data_dir" in message and "\n" not in message
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist")
    with pytest.raises(MissingDataError, match="cifar-100-python.tar.gz"):
        load_source("cifar100")


def test_network_check_is_quick(monkeypatch):
    assert network_available() is False  # forced off by the fixture
    monkeypatch.delenv(sources.NO_NETWORK_ENV)
    monkeypatch.setattr(sources, "NETWORK_PROBE", ("nonexistent.invalid", 443))
    start = time.monotonic()
    assert network_available(timeout=0.5) is False
    assert time.monotonic() - start < 1.5


def test_bad_files_raise_clear_errors(tmp_path):
    # Labels out of range, named with the file.
    folder = write_cifar10_binary(tmp_path / "a")
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[0] = 12
    (folder / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test_batch\.bin.*labels span \[0, 12\]"):
        load_source("cifar10", data_dir=str(tmp_path / "a"))
    # Truncated records.
    (folder / "test_batch.bin").write_bytes(bytes(data[:-5]))
    with pytest.raises(DataError, match="not a positive multiple"):
        load_source("cifar10", data_dir=str(tmp_path / "a"))
    # Empty file.
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"test_batch\.bin"):
        load_source("cifar10", data_dir=str(tmp_path / "a"))
    # An incomplete extracted folder is an error, not a silent fall-through.
    folder = write_cifar10_python(tmp_path / "b")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_source("cifar10", data_dir=str(tmp_path / "b"))
    # IDX images and labels disagree in count.
    fashion = write_fashion(tmp_path / "c")
    (fashion / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_source("fashion_mnist", data_dir=str(fashion))
    # A corrupt archive names the archive.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar-100-python.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="cifar-100-python.tar.gz: cannot read archive"):
        load_source("cifar100", data_dir=str(tmp_path / "d"))


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    folder = write_cifar10_python(tmp_path / "x")
    (folder / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        load_source("cifar10", data_dir=str(tmp_path / "x"))
    assert not (tmp_path / "pwned").exists()


def test_every_class_in_every_split(tmp_path):
    # A class present in train but absent from the test split is an error naming it.
    folder = write_cifar10_binary(tmp_path)
    records = np.frombuffer((folder / "test_batch.bin").read_bytes(), np.uint8).reshape(-1, 3073).copy()
    records[records[:, 0] == 7, 0] = 6
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    with pytest.raises(DataError, match=r"cifar10 test split has no examples of class\(es\) 7 \('horse'\)"):
        load_source("cifar10", data_dir=str(tmp_path))


def test_train_fraction_and_seeds(tmp_path):
    write_fashion(tmp_path, n_train=400, n_test=20)
    full = load_source("fashion_mnist", data_dir=str(tmp_path), seed=1)
    half = load_source("fashion_mnist", data_dir=str(tmp_path), seed=1, train_fraction=0.5)
    assert (len(full.train), len(half.train), len(half.val)) == (360, 180, 40)
    np.testing.assert_array_equal(full.val.images, half.val.images)  # the carve ignores train_fraction
    assert np.all(np.bincount(half.train.labels) == 18)
    other = load_source("fashion_mnist", data_dir=str(tmp_path), seed=2)
    assert full.fingerprint() != other.fingerprint()
    assert full.fingerprint() == load_source("fashion_mnist", data_dir=str(tmp_path), seed=1).fingerprint()


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(sources, "KNOWN_LOCAL_ROOTS", (str(DEBIAN_FASHION.parent),))
    ds = load_source("fashion_mnist", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert ds.train.images.shape[1:] == (28, 28, 1)
    assert np.all(np.bincount(ds.val.labels, minlength=10) == 600)
    assert np.all(np.bincount(ds.train.labels, minlength=10) == 5400)
    summary = ds.summary()
    assert summary["sizes"] == {"train": 54000, "val": 6000, "test": 10000} and summary["num_classes"] == 10
    again = load_source("fashion_mnist", seed=0)
    assert again.fingerprint() == ds.fingerprint()
    np.testing.assert_array_equal(again.val.images, ds.val.images)
    other = load_source("fashion_mnist", seed=1)
    assert other.fingerprint() != ds.fingerprint()
    assert not np.array_equal(other.val.labels, ds.val.labels) or not np.array_equal(other.val.images, ds.val.images)
    np.testing.assert_array_equal(other.test.images, ds.test.images)  # the test split never changes


# ---------------------------------------------------------------------------
# Splits and the data classes
# ---------------------------------------------------------------------------

def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    rest, taken = stratified_split(labels, 0.1, seed=0)
    assert list(np.bincount(labels[taken])) == [1, 2, 3, 4]
    assert np.array_equal(np.sort(np.concatenate([rest, taken])), np.arange(100))
    again_rest, again_taken = stratified_split(labels, 0.1, seed=0)
    assert np.array_equal(taken, again_taken) and np.array_equal(rest, again_rest)
    assert not np.array_equal(taken, stratified_split(labels, 0.1, seed=1)[1])
    # Half-up rounding: 5 examples at 10% give one.
    assert len(stratified_split(np.zeros(5, int), 0.1, seed=0)[1]) == 1


def test_split_that_would_lose_a_class_is_an_error():
    labels = np.array([0] * 20 + [1] + [2] * 20)
    with pytest.raises(DataError, match=r"class 1 \('cat'\) has 1 example"):
        stratified_split(labels, 0.1, seed=0, class_names=("dog", "cat", "cow"))
    with pytest.raises(DataError, match="class 1 "):
        carve_validation(Split(np.zeros((41, 2, 2, 1), np.uint8), labels), 0.1, 0)
    with pytest.raises(DataError, match="remaining"):  # 1.0 would leave nothing on the train side
        stratified_split(labels, 1.0, seed=0)


def test_subset_fraction():
    split = Split(np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1), np.repeat(np.arange(4), 50))
    assert subset_fraction(split, 1.0, seed=0) is split
    quarter, half = subset_fraction(split, 0.25, seed=0), subset_fraction(split, 0.5, seed=0)
    assert list(np.bincount(quarter.labels)) == [13, 13, 13, 13]  # 50 * 0.25 = 12.5, rounded half up
    assert list(np.bincount(half.labels)) == [25, 25, 25, 25]
    assert set(quarter.images.ravel()) <= set(half.images.ravel())  # nested for one seed
    # All of a class may be kept, but never none of it.
    assert len(subset_fraction(split, 0.99, seed=0)) == 200
    tiny = Split(np.zeros((12, 1, 1, 1), np.uint8), np.array([0] + [1] * 11))
    with pytest.raises(DataError, match="class 0 has 1 example"):
        subset_fraction(tiny, 0.25, seed=0)
    with pytest.raises(DataError, match="train_fraction"):
        subset_fraction(split, 0.0, seed=0)


def test_check_every_class():
    split = Split(np.zeros((4, 1, 1, 1), np.uint8), np.array([0, 0, 2, 2]))
    with pytest.raises(DataError, match=r"val has no examples of class\(es\) 1 \('b'\), 3 \('d'\)"):
        check_every_class(split, 4, "val", class_names=("a", "b", "c", "d"))
    with pytest.raises(DataError, match=r"no examples of class\(es\) 1$"):
        check_every_class(split, 3, "val")
    check_every_class(Split(split.images, np.array([0, 1, 2, 1])), 3, "val")  # complete: no error


def test_data_classes_validate_and_fingerprint():
    with pytest.raises(DataError, match="uint8"):
        Split(np.zeros((2, 3, 3, 1), np.float32), np.zeros(2, int))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        Split(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(3, int))
    with pytest.raises(DataError, match=r"shape \(N, H, W, 1 or 3\)"):
        Split(np.zeros((2, 3, 3), np.uint8), np.zeros(2, int))
    s = Split(np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 1], np.uint8))
    assert s.labels.dtype == np.int64
    with pytest.raises(DataError, match="labels span"):
        ImageDataset("x", ("a",), s, s, s)
    a = ImageDataset("x", ("a", "b"), s, s, s)
    changed = s.images.copy()
    changed[1, 2, 2, 0] = 1
    b = ImageDataset("x", ("a", "b"), Split(changed, s.labels), s, s)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() != ImageDataset("x", ("a", "c"), s, s, s).fingerprint()
    assert a.fingerprint() == ImageDataset("y", ("a", "b"), s, s, s).fingerprint()
    assert set(a.summary()) == {"name", "num_classes", "class_names", "sizes", "image_shape", "fingerprint"}


# ---------------------------------------------------------------------------
# The input pipeline
# ---------------------------------------------------------------------------

def make_dataset(n=100, size=9, channels=3, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    split = lambda m: Split(rng.integers(0, 256, (m, size, size, channels), dtype=np.uint8),  # noqa: E731
                            np.arange(m) % classes)
    return ImageDataset("toy", tuple(f"c{i}" for i in range(classes)), split(n), split(23), split(17))


def collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_resize_size():
    from lth_keras.datasets import resize_size

    assert resize_size(224) == 256 and resize_size(32) == 37 and resize_size(28) == 32


def test_pipeline_shapes_and_normalisation():
    from lth_keras.datasets import InputPipeline

    ds = make_dataset()  # 9 x 9 images are already resize_size(8): crops are exact pixels
    p = InputPipeline(ds, image_size=8, batch_size=16, seed=0)
    assert p.steps_per_epoch == 6
    assert p.describe() == {"image_size": 8, "crop": "random", "resize_size": 9, "channels": 3,
                            "mean": [float(m) for m in p.mean],
                            "std": [float(s) for s in p.std], "batch_size": 16, "steps_per_epoch": 6}
    np.testing.assert_allclose(p.mean, (ds.train.images / 255.0).mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(p.std, (ds.train.images / 255.0).std(axis=(0, 1, 2)), rtol=1e-5)
    batches = list(p.train_epoch(0))
    assert len(batches) == 6
    x, y = batches[0]
    assert x.shape == (16, 8, 8, 3) and x.dtype.name == "float32" and y.shape == (16,) and y.dtype.name == "int64"
    images, _ = collect(batches)
    assert abs(images.mean()) < 0.1 and abs(images.std() - 1) < 0.1
    # Every training image is one of the (R - S + 1)^2 crops of a training image.
    raw = images[:16] * p.std + p.mean
    crops = {np.round(ds.train.images[i, a:a + 8, b:b + 8] / 255.0, 3).tobytes()
             for i in range(100) for a in range(2) for b in range(2)}
    assert all(np.round(r.astype(np.float64), 3).tobytes() in crops for r in raw)


def evaluated(ds):
    """(images, labels) of the weight-1 examples of evaluation batches."""
    xs, ys, ws = zip(*[(x.numpy(), y.numpy(), w.numpy()) for x, y, w in ds])
    keep = np.concatenate(ws) == 1
    return np.concatenate(xs)[keep], np.concatenate(ys)[keep]


def test_evaluation_is_every_example_once_centre_cropped():
    from lth_keras.datasets import InputPipeline

    ds = make_dataset(size=12)  # resize_size(8) = 9: a real resize, then the centre crop
    p = InputPipeline(ds, image_size=8, batch_size=5, seed=0)
    for split, n in (("train", 100), ("val", 23), ("test", 17)):
        batches = list(p.evaluation(split))
        # Every batch is full (one compiled shape); padding has weight 0.
        assert [len(b[1]) for b in batches] == [5] * (-(-n // 5))
        assert p.evaluation_batches(split) == len(batches)
        assert sum(float(b[2].numpy().sum()) for b in batches) == n
        images, labels = evaluated(batches)
        assert len(images) == n and list(labels) == list(ds.split(split).labels)
    # With images already at resize_size, the centre crop is exactly the middle pixels:
    # resize_size(12) = 14, so the crop starts at pixel (14 - 12) // 2 = 1.
    ds = make_dataset(size=14)
    p = InputPipeline(ds, image_size=12, batch_size=7, seed=0)
    images, _ = evaluated(p.evaluation("test"))
    expected = (ds.test.images[:, 1:13, 1:13] / 255.0 - p.mean) / p.std
    np.testing.assert_allclose(images, expected, atol=1e-3)


@pytest.mark.parametrize("size,image_size", [(7, 16), (37, 224), (100, 32)])
def test_crops_never_fall_off_the_image(size, image_size):
    # crop_and_resize blanks a row whose sample lands a hair past the last pixel;
    # (7, 16) and (37, 224) trigger it at the largest offset without the edge guard.
    # Random offsets may miss that case, so check every possible crop directly.
    import tensorflow as tf
    from lth_keras.datasets import InputPipeline

    images = np.stack([np.zeros((size, size, 1), np.uint8), np.full((size, size, 1), 255, np.uint8)])
    split = Split(images, np.array([0, 1]))
    p = InputPipeline(ImageDataset("edge", ("a", "b"), split, split, split), image_size=image_size, batch_size=2, seed=0)
    k = np.arange(p.resize_size - image_size + 1)
    offsets = np.stack(np.meshgrid(k, k), -1).reshape(-1, 2)
    crops = tf.image.crop_and_resize(images[1:], p.boxes(offsets), np.zeros(len(offsets), np.int32),
                                     [image_size, image_size]).numpy()
    assert crops.min() > 254.99
    x, y = collect(p.train_epoch(0))  # and through the pipeline: exactly +-1
    np.testing.assert_allclose(x, np.where(y == 1, 1.0, -1.0)[:, None, None, None] * np.ones_like(x), atol=1e-4)


def test_grayscale_becomes_three_channels():
    from lth_keras.datasets import InputPipeline

    p = InputPipeline(make_dataset(channels=1), image_size=8, batch_size=10, seed=0)
    assert p.mean.shape == (3,) and p.mean[0] == p.mean[2]
    x, _ = next(iter(p.train_epoch(0)))
    assert x.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_batch_size_must_fit():
    from lth_keras.datasets import InputPipeline

    with pytest.raises(DataError, match="batch_size 101"):
        InputPipeline(make_dataset(), image_size=8, batch_size=101, seed=0)


def epoch_digest(pipeline, epoch):
    h = hashlib.sha256()
    for x, y in pipeline.train_epoch(epoch):
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_train_epochs_are_deterministic_and_resumable():
    from lth_keras.datasets import InputPipeline

    ds = make_dataset(size=12)
    p = InputPipeline(ds, image_size=8, batch_size=16, seed=7)
    first = epoch_digest(p, 3)
    for e in range(3):  # history must not matter
        epoch_digest(p, e)
    assert epoch_digest(p, 3) == first
    assert epoch_digest(InputPipeline(ds, image_size=8, batch_size=16, seed=7), 3) == first
    assert epoch_digest(p, 4) != first
    assert epoch_digest(InputPipeline(ds, image_size=8, batch_size=16, seed=8), 3) != first
    # Another process gives the same epoch.
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_datasets import make_dataset, epoch_digest
        from lth_keras.datasets import InputPipeline
        print(epoch_digest(InputPipeline(make_dataset(size=12), image_size=8, batch_size=16, seed=7), 3))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == first


def test_each_epoch_visits_distinct_examples_in_a_new_order():
    from lth_keras.datasets import InputPipeline

    # Constant images whose value is the example's index identify every example.
    n = 50
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 9, 9, 3)).copy()
    split = Split(images, np.arange(n) % 5)
    p = InputPipeline(ImageDataset("ids", tuple("abcde"), split, split, split), image_size=8, batch_size=8, seed=0)

    def order(epoch):
        x, y = collect(p.train_epoch(epoch))
        ids = np.rint((x[:, 0, 0, 0] * p.std[0] + p.mean[0]) * 255).astype(int)
        assert np.array_equal(y, ids % 5)
        return ids

    a, b = order(0), order(1)
    assert len(a) == 48 and len(set(a)) == 48  # 6 full batches, no repeats
    assert not np.array_equal(a, b)


def test_large_splits_stream_batches_with_the_same_pixels(monkeypatch):
    # A split larger than STREAM_BYTES (a memory-mapped folder cache, typically) is not
    # made one tensor: batches are gathered from the array. The pixels are the same.
    from lth_keras.datasets import pipeline

    ds = make_dataset(size=12)
    constant = pipeline.InputPipeline(ds, image_size=8, batch_size=16, seed=7)
    monkeypatch.setattr(pipeline, "STREAM_BYTES", 0)
    streamed = pipeline.InputPipeline(ds, image_size=8, batch_size=16, seed=7)
    assert epoch_digest(streamed, 2) == epoch_digest(constant, 2)
    for split in ("val", "test"):
        a = [x.numpy() for x, _, _ in constant.evaluation(split)]
        b = [x.numpy() for x, _, _ in streamed.evaluation(split)]
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
