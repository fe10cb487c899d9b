"""Smoke test of the benchmark (python -m tools.benchmark): a tiny LeNet run (and the
JAX / TF engine comparison at a tiny size) writes the expected report."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--models=lenet_300_100",
         "--steps=4", "--warmup=1", "--epochs=2", "--epoch_steps=4", "--pipeline_epochs=1",
         "--engines_model=lenet_300_100",
         "--train_images=1024",
         "--mirrored", "--noisolated_memory", f"--output={out}"],
        capture_output=True, text=True, timeout=240, cwd=REPO)  # as documented: from the root
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    assert set(report) >= {"settings", "environment", "models", "main_process_peak_rss_mib",
                           "keras_auto_jit_compile", "seconds"}
    lenet = report["models"]["lenet_300_100"]
    assert set(lenet) >= {"masked_vs_dense", "masked_vs_dense_xla", "custom_vs_fit",
                          "epoch_loop_vs_per_step_sync", "pipeline_vs_training", "mirrored"}
    assert lenet["masked_vs_dense_xla"]["jit_compile"] is True
    assert lenet["epoch_loop_vs_per_step_sync"]["ratio"] > 0
    for side in ("masked", "dense"):
        assert lenet["masked_vs_dense"][side]["median_s"] > 0
        assert lenet["masked_vs_dense"][side]["calls"] == 4
    assert set(lenet["masked_vs_dense"]) >= {"ratio", "median_paired_ratio", "target"}
    for side in ("custom", "fit"):
        assert set(lenet["custom_vs_fit"][side]) >= {"median_s", "epoch_s",
                                                      "per_epoch_overhead_s"}
    assert lenet["pipeline_vs_training"]["pipeline"]["images_per_epoch"] > 0
    assert lenet["pipeline_vs_training"]["ratio"] > 0
    mirrored = lenet["mirrored"]
    assert mirrored["devices_2"]["devices"] == 2 and mirrored["devices_1"]["devices"] == 1
    assert mirrored["devices_2"]["peak_rss_mib"] > mirrored["devices_2"]["baseline_rss_mib"] > 0
    markdown = (out / "benchmark.md").read_text()
    assert "masked / dense" in markdown and markdown in proc.stdout
    # --epochs=2 --epoch_steps=4: two interleaved LeNet epochs of 4 steps per engine
    engines = report["engines"]
    if importlib.util.find_spec("jax") is None:
        assert "JAX is not installed" in engines["skipped"] and "skipped" in markdown
    else:
        assert engines["steps_per_epoch"] == 4
        for side in ("jax", "tensorflow"):
            assert engines[side]["median_s"] > 0 and engines[side]["calls"] == 2
        assert engines["jax"]["environment"]["engine"] == "jax"
        assert engines["ratio"] > 0 and engines["median_paired_ratio"] > 0
        assert "JAX engine / TF engine" in markdown
