"""Smoke test of tools/gpu_check.py on the CPU, with TensorFlow missing as on the GPU
machine: every part runs and the report says what it measured."""

import json
import os
import subprocess
import sys

import pytest

from conftest import HISTOLOGY, REPO, needs_histology

pytest.importorskip("jax", reason="gpu_check runs the JAX engine")


@pytest.mark.slow
@needs_histology
def test_gpu_check_runs_without_tensorflow(tmp_path):
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no tensorflow here (test)')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": os.pathsep.join([str(shadow.parent), REPO])}
    out = tmp_path / "check"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--tiny",
         "--model=lenet_300_100", "--image_size=16", "--train_images=128", "--epochs=1",
         "--bare_steps=2", f"--data_dir={os.path.dirname(HISTOLOGY)}", f"--output={out}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [r["batch"] for r in report["throughput"]] == [32, 16]
    for row in report["throughput"]:
        assert row["loop_images_per_s"] > 0 and row["bare_images_per_s"] > 0
        assert row["loop_over_bare"] > 0
    e2e = report["end_to_end"]
    assert e2e["levels"] == [0, 1] and e2e["survivors"] == e2e["survivors_expected"]
    assert e2e["masks_binary"] and e2e["pruned_weights_zero"] and e2e["transfer_mask_is_ticket"]
    assert report["environment"]["engine"] == "jax"
    assert (out / "gpu_check.md").read_text() in proc.stdout
