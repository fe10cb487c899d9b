"""Shared test set-up: quiet TensorFlow, tiny data in the original file formats."""

import gzip
import os
import struct
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never reach the network: tfds would hang ~200 s offline.
os.environ["LTH_KERAS_NO_NETWORK"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path, array):
    """Writes a uint8 array in the IDX format of (Fashion-)MNIST, gzipped."""
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(directory, n_train=300, n_test=100, seed=0):
    """A tiny, learnable Fashion-MNIST look-alike: class c is a bright bar at row 2c."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 7, 4:24] += 180
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    return directory


@pytest.fixture(scope="session")
def tiny_fashion_dir(tmp_path_factory):
    return make_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


def run_binary(module, *args, timeout=300, **popen):
    """Runs `python -m module args` in a fresh process; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=popen.pop("cwd", REPO), **popen)
