"""The natural-image sources (Fashion-MNIST, CIFAR-10, CIFAR-100), read offline.

Where the data comes from, first hit wins:
  1. the original files under `data_dir` (extracted or the original archive);
  2. a TFDS copy that is already prepared (no network needed);
  3. known local copies of the original files (Debian's dataset package, the Keras cache);
  4. a TFDS download, only if the network is reachable;
  5. otherwise a MissingDataError that says which files to provide.
The network is checked before TFDS is ever asked to download anything: offline,
TFDS retries for minutes before failing.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import logging
import os
import pickle
import re
import socket
import struct
import tarfile
import threading
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from lth_keras.datasets.dataset import (
    SPLITS,
    DataError,
    ImageDataset,
    MissingDataError,
    Split,
    carve_validation,
    check_every_class,
    subset_fraction,
)

log = logging.getLogger(__name__)

SOURCES = ("fashion_mnist", "cifar10", "cifar100")

# Roots that may hold local copies of the original files (step 3). Module-level
# so tests can replace them to simulate "no data anywhere".
KNOWN_LOCAL_ROOTS: tuple[str, ...] = ("/usr/share/datasets", "~/.keras/datasets")
# Where prepared TFDS data may live besides `data_dir` and $TFDS_DATA_DIR (step 2).
TFDS_DATA_DIRS: tuple[str, ...] = ("~/tensorflow_datasets",)
# Set to 1 to force network_available() to False (tests, air-gapped machines).
NO_NETWORK_ENV = "LTH_KERAS_NO_NETWORK"
# The host TFDS downloads from; resolving and reaching it means downloads can work.
NETWORK_PROBE = ("storage.googleapis.com", 443)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())
assert len(CIFAR100_CLASSES) == 100
_STANDARD_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


# ---------------------------------------------------------------------------
# Parsing the original file formats. Each reader gets the raw bytes plus a
# `where` string (file path, or archive:member) to name in error messages.
# ---------------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    """Exception text squeezed onto one line (DataError messages are one line)."""
    return " ".join(str(e).split())


@dataclasses.dataclass(frozen=True)
class _Blob:
    data: bytes
    where: str


def _read_idx(blob: _Blob, ndim: int) -> np.ndarray:
    """An IDX file (gzip'd or plain) of unsigned bytes with `ndim` dimensions."""
    data = blob.data
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{blob.where}: corrupt gzip data ({_one_line(e)})") from None
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{blob.where}: not an IDX file (bad magic number)")
    if data[2] != 0x08 or data[3] != ndim:
        raise DataError(
            f"{blob.where}: expected {ndim}-D unsigned-byte IDX data, got type 0x{data[2]:02x} with {data[3]} dims"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"{blob.where}: header says shape {dims} but holds {len(data) - header} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays.

    The CIFAR python version is a pickle, and unpickling an arbitrary file from
    a user directory could execute code; these are the only globals it needs.
    """

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer", "encode"}

    def find_class(self, module, name):
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 renamed it
        if name in self._ALLOWED and module in {"numpy", "numpy._core.multiarray", "numpy._core.numeric", "_codecs"}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(blob: _Blob) -> dict:
    try:
        # encoding="bytes": the originals are Python 2 pickles of str keys.
        obj = _ArrayUnpickler(io.BytesIO(blob.data), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(f"{blob.where}: not a CIFAR python batch ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{blob.where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_pixels(flat: np.ndarray, where: str) -> np.ndarray:
    """(N, 3072) rows of 1024 R, 1024 G, 1024 B (each row-major 32x32) -> (N, 32, 32, 3)."""
    if flat.ndim != 2 or flat.shape[1] != 3072:
        raise DataError(f"{where}: expected image rows of 3072 bytes, got shape {flat.shape}")
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _cifar_python_batch(blob: _Blob, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(blob)
    if "data" not in d or label_key not in d:
        raise DataError(f"{blob.where}: missing 'data' or '{label_key}' entry (keys: {sorted(d)})")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8:
        raise DataError(f"{blob.where}: image data must be uint8, got {data.dtype}")
    return _cifar_pixels(data, blob.where), np.asarray(d[label_key], dtype=np.int64).reshape(-1)


def _cifar_binary(blob: _Blob, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of `label_bytes` label bytes followed by 3072 pixel bytes."""
    record = label_bytes + 3072
    if len(blob.data) == 0 or len(blob.data) % record:
        raise DataError(f"{blob.where}: size {len(blob.data)} is not a positive multiple of the {record}-byte record")
    rows = np.frombuffer(blob.data, np.uint8).reshape(-1, record)
    return _cifar_pixels(rows[:, label_bytes:], blob.where), rows[:, label_index].astype(np.int64)


def _names_from_text(blob: _Blob | None, expected: int, default: tuple[str, ...]) -> tuple[str, ...]:
    if blob is None:
        return default
    names = tuple(line.strip() for line in blob.data.decode("utf-8", "replace").splitlines() if line.strip())
    if len(names) != expected:
        raise DataError(f"{blob.where}: expected {expected} class names, found {len(names)}")
    return names


def _names_from_meta(blob: _Blob | None, key: str, expected: int, default: tuple[str, ...]) -> tuple[str, ...]:
    if blob is None:
        return default
    meta = _unpickle(blob)
    if key not in meta:
        raise DataError(f"{blob.where}: missing '{key}' entry")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])
    if len(names) != expected:
        raise DataError(f"{blob.where}: expected {expected} class names, found {len(names)}")
    return names


def _make_split(images: np.ndarray, labels: np.ndarray, num_classes: int, where: str) -> Split:
    if len(images) == 0:
        raise DataError(f"{where}: no examples")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes})")
    return Split(images, labels.astype(np.int64, copy=False))


def _concat(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR10_PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


def _parse_fashion(files: Mapping[str, _Blob]):
    splits = []
    for prefix in ("train", "t10k"):
        images_blob, labels_blob = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images, labels = _read_idx(images_blob, 3), _read_idx(labels_blob, 1)
        where = f"{images_blob.where} + {labels_blob.where}"
        splits.append(_make_split(images[..., None], labels.astype(np.int64), 10, where))
    return FASHION_MNIST_CLASSES, splits[0], splits[1]


def _parse_cifar10_python(files):
    names = _names_from_meta(files.get("batches.meta"), "label_names", 10, CIFAR10_CLASSES)
    train = _concat([_cifar_python_batch(files[f], "labels") for f in _CIFAR10_PY_TRAIN])
    test = _cifar_python_batch(files["test_batch"], "labels")
    return (names, _make_split(*train, 10, files["data_batch_1"].where.replace("data_batch_1", "data_batch_*")),
            _make_split(*test, 10, files["test_batch"].where))


def _parse_cifar10_binary(files):
    names = _names_from_text(files.get("batches.meta.txt"), 10, CIFAR10_CLASSES)
    train = _concat([_cifar_binary(files[f], 1, 0) for f in _CIFAR10_BIN_TRAIN])
    test = _cifar_binary(files["test_batch.bin"], 1, 0)
    return (names, _make_split(*train, 10, files["data_batch_1.bin"].where.replace("data_batch_1", "data_batch_*")),
            _make_split(*test, 10, files["test_batch.bin"].where))


def _parse_cifar100_python(files):
    names = _names_from_meta(files.get("meta"), "fine_label_names", 100, CIFAR100_CLASSES)
    train = _cifar_python_batch(files["train"], "fine_labels")
    test = _cifar_python_batch(files["test"], "fine_labels")
    return names, _make_split(*train, 100, files["train"].where), _make_split(*test, 100, files["test"].where)


def _parse_cifar100_binary(files):
    names = _names_from_text(files.get("fine_label_names.txt"), 100, CIFAR100_CLASSES)
    # Two label bytes per record: coarse then fine; the paper's CIFAR-100 is the fine one.
    train = _cifar_binary(files["train.bin"], 2, 1)
    test = _cifar_binary(files["test.bin"], 2, 1)
    return names, _make_split(*train, 100, files["train.bin"].where), _make_split(*test, 100, files["test.bin"].where)


# ---------------------------------------------------------------------------
# Finding the files: extracted folders or the original archives.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Format:
    """One original distribution form of a source."""

    folder: str                           # the canonical extracted folder name
    archives: tuple[str, ...]             # archive file names holding `folder`
    required: tuple[str, ...]             # member names that must be present
    optional: tuple[str, ...]             # class-name files; standard names if absent
    parse: Callable[[Mapping[str, _Blob]], tuple]
    gz_variants: bool = False             # IDX files come as `name` or `name.gz`


@dataclasses.dataclass(frozen=True)
class _SourceSpec:
    formats: tuple[_Format, ...]
    containers: tuple[str, ...]           # extra sub-folders of a root that may hold the files
    to_provide: str                       # for MissingDataError


_SPECS = {
    "fashion_mnist": _SourceSpec(
        formats=(_Format("fashion-mnist", (), _FASHION_FILES, (), _parse_fashion, gz_variants=True),),
        containers=("fashion_mnist",),
        to_provide=("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                    "t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) in DIR "
                    "and pass --data_dir=DIR, or run `apt-get install dataset-fashion-mnist` "
                    "(installs them in /usr/share/datasets/fashion-mnist)"),
    ),
    "cifar10": _SourceSpec(
        formats=(
            # Keras 2 caches the archive as cifar-10-batches-py.tar.gz; Keras 3 as
            # cifar-10-batches-py-target_archive, extracted under cifar-10-batches-py-target/.
            _Format("cifar-10-batches-py",
                    ("cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz", "cifar-10-batches-py-target_archive"),
                    _CIFAR10_PY_TRAIN + ("test_batch",), ("batches.meta",), _parse_cifar10_python),
            _Format("cifar-10-batches-bin", ("cifar-10-binary.tar.gz",),
                    _CIFAR10_BIN_TRAIN + ("test_batch.bin",), ("batches.meta.txt",), _parse_cifar10_binary),
        ),
        containers=("cifar-10-batches-py-target",),
        to_provide=("cifar-10-python.tar.gz or cifar-10-binary.tar.gz (or their extracted folder "
                    "cifar-10-batches-py/ or cifar-10-batches-bin/) from https://www.cs.toronto.edu/~kriz/cifar.html "
                    "in DIR and pass --data_dir=DIR"),
    ),
    "cifar100": _SourceSpec(
        formats=(
            _Format("cifar-100-python",
                    ("cifar-100-python.tar.gz", "cifar-100-python-target_archive"),
                    ("train", "test"), ("meta",), _parse_cifar100_python),
            _Format("cifar-100-binary", ("cifar-100-binary.tar.gz",),
                    ("train.bin", "test.bin"), ("fine_label_names.txt",), _parse_cifar100_binary),
        ),
        containers=("cifar-100-python-target",),
        to_provide=("cifar-100-python.tar.gz or cifar-100-binary.tar.gz (or their extracted folder "
                    "cifar-100-python/ or cifar-100-binary/) from https://www.cs.toronto.edu/~kriz/cifar.html "
                    "in DIR and pass --data_dir=DIR"),
    ),
}


def _find_member(directory: str, name: str, fmt: _Format) -> str | None:
    for candidate in (name, name + ".gz") if fmt.gz_variants else (name,):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_directory(directory: str, fmt: _Format) -> dict[str, _Blob]:
    files = {}
    for name in fmt.required + fmt.optional:
        path = _find_member(directory, name, fmt)
        if path is not None:
            with open(path, "rb") as f:
                files[name] = _Blob(f.read(), path)
    return files


def _read_archive(path: str, fmt: _Format) -> dict[str, _Blob]:
    """Read the needed members of a tar(.gz) in one streaming pass, without extracting."""
    wanted = set(fmt.required + fmt.optional)
    files = {}
    try:
        # "r|*" streams: no seeking back through a 160 MB gzip stream per member.
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted and base not in files:
                    files[base] = _Blob(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read archive ({_one_line(e)})") from None
    missing = [n for n in fmt.required if n not in files]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)}")
    return files


def _candidate_dirs(root: str, name: str, spec: _SourceSpec) -> list[str]:
    root = os.path.expanduser(root)
    dirs = [root, os.path.join(root, name)] + [os.path.join(root, c) for c in spec.containers]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _find_original(name: str, roots: Sequence[str]):
    """Locate and parse the original files under `roots`; None if nothing is there.

    Extracted folders are preferred over archives (no decompression). A folder
    or archive that is present but broken is an error, not a silent skip: the
    user meant it to be used.
    """
    spec = _SPECS[name]
    for root in roots:
        dirs = _candidate_dirs(root, name, spec)
        for d in dirs:
            for fmt in spec.formats:
                canonical = os.path.join(d, fmt.folder)
                for folder in (canonical, d):
                    present = [n for n in fmt.required if _find_member(folder, n, fmt)]
                    if len(present) == len(fmt.required):
                        return fmt.parse(_read_directory(folder, fmt)), folder
                    if folder == canonical and present:
                        missing = [n for n in fmt.required if n not in present]
                        raise DataError(f"{canonical}: incomplete, missing {', '.join(missing)}")
        for d in dirs:
            for fmt in spec.formats:
                for archive in fmt.archives:
                    path = os.path.join(d, archive)
                    if os.path.isfile(path):
                        return fmt.parse(_read_archive(path, fmt)), path
    return None


# ---------------------------------------------------------------------------
# TFDS: prepared copies (offline) and downloads (online only).
# ---------------------------------------------------------------------------

def _tfds_dirs(data_dir: str | None) -> list[str]:
    dirs = [data_dir] if data_dir else []
    if os.environ.get("TFDS_DATA_DIR"):
        dirs.append(os.environ["TFDS_DATA_DIR"])
    dirs.extend(TFDS_DATA_DIRS)
    return list(dict.fromkeys(os.path.expanduser(d) for d in dirs))


def _prepared_tfds_versions(tfds_dir: str, name: str) -> list[str]:
    """Version folders of a prepared TFDS dataset: cheap, without importing TFDS."""
    infos = glob.glob(os.path.join(glob.escape(tfds_dir), name, "*", "dataset_info.json"))
    # Skip "incomplete.*" folders of an interrupted prepare; newest version first.
    versions = [os.path.dirname(p) for p in infos if re.fullmatch(r"\d+(\.\d+)*", os.path.basename(os.path.dirname(p)))]
    return sorted(versions, key=lambda v: [int(x) for x in os.path.basename(v).split(".")], reverse=True)


def _tfds():
    """tensorflow_datasets, or None without TensorFlow (the JAX engine needs neither).

    Imported lazily: it is slow to import and only needed for TFDS copies.
    """
    from lth_keras import quiet

    try:
        with quiet.framework_startup():  # the data load before the framework starts
            import tensorflow  # noqa: F401  TFDS reads through tf.data
            import tensorflow_datasets as tfds
    except ImportError:
        return None
    return tfds


def _read_tfds_builder(builder, name: str):
    tfds = _tfds()

    names = tuple(builder.info.features["label"].names)
    if names == tuple(str(i) for i in range(len(names))):
        # TFDS fills in class names while preparing; a copy without them reads as "0", "1", ...
        names = _STANDARD_CLASSES[name]
    splits = []
    for tfds_split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=-1, shuffle_files=False))
        images = np.asarray(data["image"], dtype=np.uint8)
        labels = np.asarray(data["label"], dtype=np.int64)  # for cifar100 "label" is the fine label
        splits.append(_make_split(images, labels, len(names), f"TFDS {name} {tfds_split}"))
    return names, splits[0], splits[1]


def _load_prepared_tfds(name: str, data_dir: str | None):
    for tfds_dir in _tfds_dirs(data_dir):
        versions = _prepared_tfds_versions(tfds_dir, name)
        if not versions:
            continue
        tfds = _tfds()
        if tfds is None:
            log.warning("%s: a TFDS copy in %s needs TensorFlow to be read; skipped", name, tfds_dir)
            continue

        builder = None
        try:
            builder = tfds.builder(name, data_dir=tfds_dir)
            if not builder.is_prepared():
                builder = None
        except Exception as e:  # TFDS raises many types for odd folders
            log.info("tfds.builder(%s, data_dir=%s) failed: %s", name, tfds_dir, _one_line(e))
        # Only another version than the installed code's default is there: open it as it is.
        for version_dir in versions if builder is None else ():
            try:
                builder = tfds.builder_from_directory(version_dir)
                break
            except Exception as e:
                log.info("cannot open TFDS folder %s: %s", version_dir, _one_line(e))
        if builder is not None:
            return _read_tfds_builder(builder, name), f"TFDS {builder.data_dir}"
    return None


def _download_tfds(name: str, data_dir: str | None):
    tfds = _tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise MissingDataError(
            f"{name}: TFDS download failed ({type(e).__name__}: {_one_line(e)}); provide {_SPECS[name].to_provide}"
        ) from e
    return _read_tfds_builder(builder, name), f"TFDS download to {builder.data_dir}"


def network_available(timeout: float = 1.5) -> bool:
    """Whether TFDS's download host can be resolved and reached within `timeout` seconds.

    DNS resolution has no timeout of its own, so it runs in a daemon thread we
    stop waiting for. LTH_KERAS_NO_NETWORK=1 forces False.
    """
    if os.environ.get(NO_NETWORK_ENV, "").strip() not in ("", "0"):
        return False
    host, port = NETWORK_PROBE
    deadline = time.monotonic() + timeout
    result = []

    def resolve():
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4])
        except OSError:
            pass

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    remaining = deadline - time.monotonic()
    if not result or remaining <= 0:
        return False
    try:
        with socket.create_connection(result[0][:2], timeout=remaining):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# The public loader.
# ---------------------------------------------------------------------------

def _load_raw(name: str, data_dir: str | None):
    """(class_names, original train Split, test Split), plus where they came from."""
    if data_dir:
        if not os.path.isdir(os.path.expanduser(data_dir)):
            raise DataError(f"--data_dir {data_dir} is not a directory")
        found = _find_original(name, [data_dir])
        if found:
            return found
        log.warning("%s: no original files in --data_dir %s; trying TFDS and known local copies", name, data_dir)
    found = _load_prepared_tfds(name, data_dir)
    if found:
        return found
    found = _find_original(name, KNOWN_LOCAL_ROOTS)
    if found:
        return found
    if _tfds() is not None and network_available():
        return _download_tfds(name, data_dir)
    searched = ([data_dir] if data_dir else []) + list(KNOWN_LOCAL_ROOTS) + _tfds_dirs(data_dir)
    raise MissingDataError(
        f"{name} not found offline (searched {', '.join(dict.fromkeys(searched)) or 'nothing'}; "
        f"{'no network' if _tfds() is not None else 'TFDS downloads need TensorFlow'}): "
        f"provide {_SPECS[name].to_provide}"
    )


def load_source(name: str, *, data_dir: str | None = None, seed=0,
                val_fraction: float = 0.1, train_fraction: float = 1.0) -> ImageDataset:
    """Load a natural-image source with a seeded stratified validation carve.

    train: the original training split minus a stratified `val_fraction`, then a
    stratified `train_fraction` subset of that; val: the carved-out part; test:
    the original test split. Every split must contain every class.
    """
    if name not in _SPECS:
        raise DataError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    (class_names, original_train, test), origin = _load_raw(name, data_dir)
    log.info("%s: read from %s", name, origin)
    train, val = carve_validation(original_train, val_fraction, seed, class_names=class_names)
    train = subset_fraction(train, train_fraction, seed, class_names=class_names)
    dataset = ImageDataset(name=name, class_names=class_names, train=train, val=val, test=test)
    for what in SPLITS:
        check_every_class(dataset.split(what), dataset.num_classes, f"{name} {what} split", class_names=class_names)
    return dataset
