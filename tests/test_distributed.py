"""Data parallelism over 2 CPU devices computes what one device computes, on both engines:
MirroredStrategy (TensorFlow) and keras.distribution.DataParallel (JAX)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_replicas_train_like_one_in_float64(tiny_fashion_dir, tmp_path, backend):
    # Gradient all-reduce, loss scaling by the global batch, L2 per replica and
    # synchronised BatchNorm statistics all have to be right for this to hold: in
    # float64 one epoch on 2 replicas matches 1 replica to rounding. (In float32 the
    # early, chaotic steps of a ResNet amplify summation-order noise instead.)
    if backend == "jax":
        pytest.importorskip("jax")
    results = {}
    for n in (1, 2):
        out = str(tmp_path / f"w{n}.npz")
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "mirrored_worker.py"),
                               str(n), tiny_fashion_dir, out], capture_output=True, text=True,
                              timeout=300, cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend})
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[n] = dict(np.load(out))
    one, two = results[1], results[2]
    assert one.keys() == two.keys()
    moved = [k for k in one if k != "train_loss" and not k.endswith("/mask")]
    for k in moved:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-9, atol=1e-10, err_msg=k)
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=1e-12)
    bn_means = [k for k in moved if k.endswith("moving_mean")]
    assert bn_means and all(np.any(one[k] != 0) for k in bn_means)
