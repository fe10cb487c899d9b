"""The one-GPU mini-paper's path, dry-run at CPU size (tools/gpu_mini.py --tiny): the data
prepared here, the grid run as on the device (JAX, TensorFlow missing), what comes back
within the device's limits, and the analysis here with its primary result."""

import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import HISTOLOGY, REPO, needs_shared_data

pytest.importorskip("jax", reason="the device runs the JAX engine")
CIFAR_JPEG = os.path.join(os.path.dirname(HISTOLOGY), "cifar10_jpeg")


def _tool(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_mini.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or os.environ)


@pytest.mark.slow
@needs_shared_data("histology_nuclei", "cifar10_jpeg")
def test_the_gpu_mini_paper_dry_run(tmp_path):
    data, out = tmp_path / "data", tmp_path / "returned"
    proc = _tool("prepare", "--tiny", f"--out={data}", f"--histology={HISTOLOGY}",
                 f"--source={CIFAR_JPEG}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    prepared = json.loads(proc.stdout)
    manifest = json.loads((data / "manifest.json").read_text())
    # The pre-resized copy holds the original folder's pixels at the storage size.
    assert manifest["histology"]["fingerprint"] == prepared["histology_fingerprint"]
    assert manifest["storage_size"] == 18 and prepared["travel_bytes"] < 64 * 2**20
    # The source travels as its own files: 20 a class and split at this size.
    assert manifest["cifar10_jpeg"]["images"] == 20 * 10 * 2
    assert sorted(os.listdir(data / "cifar10_jpeg" / "train")) == sorted(
        os.listdir(os.path.join(CIFAR_JPEG, "train")))

    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no tensorflow here (test)')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": os.pathsep.join([str(shadow.parent), REPO])}
    proc = _tool("run", "--tiny", f"--data={data}", f"--out={out}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == ["gpu_mini_log.txt", "gpu_mini_report.json", "gpu_mini_runs.tar.gz"]
    assert all(os.path.getsize(out / f) < 16 * 2**20 for f in files)
    with tarfile.open(out / "gpu_mini_runs.tar.gz") as tar:
        names = tar.getnames()
    assert names and not [n for n in names if n.endswith(".npz")]  # no weights come back
    assert "gpu_mini/grid.json" in names
    report = json.loads((out / "gpu_mini_report.json").read_text())
    assert report["exit"] == 0 and not report["stopped_at_budget"]
    # per search: tickets, then per transfer seed scratch and the ticket, and with transfer
    # seed 0 only (--control_transfer_seeds) its reinit and random pruning
    assert len(report["runs"]) == 2 * 7 and set(report["stages"]) >= {"grid", "packing", "total"}
    assert any(run.endswith("cifar10_jpeg-random-seed1-t0") for run in report["runs"])
    assert not any(run.endswith("cifar10_jpeg-random-seed1-t1") for run in report["runs"])

    analysis = tmp_path / "analysis"
    proc = _tool("analyze", str(out), f"--runs={tmp_path / 'runs'}", f"--output_dir={analysis}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO((analysis / "primary.csv").read_text())))
    primary = next(r for r in rows if r["primary"] == "True")
    assert (primary["contrast"], primary["level"], primary["unit"], primary["searches"],
            primary["n"]) == ("ticket − scratch", "1", "search", "2", "4")
    assert primary["ci_low"] and not primary["mde"]  # 2 searches: not estimable
    assert "# Primary result: ticket − scratch at level 1" in proc.stdout
    assert (analysis / "stages.md").read_text().startswith("# Wall time per stage")
    assert (analysis / "fig3.png").stat().st_size > 1000
