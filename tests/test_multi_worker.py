"""Several processes on localhost: MultiWorkerMirroredStrategy through TF_CONFIG (TensorFlow),
jax.distributed through its environment variables (JAX)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, in_process, run_binary
from lth_keras import lottery

pytestmark = pytest.mark.slow

TINY = ["--source=fashion_mnist", "--model=lenet_300_100", "--image_size=16", "--rounds=1",
        "--rewind_epoch=1", "--batch_size=32", "--learning_rate=0.01", "--seed=3",
        "--deterministic", "--checkpoint_every=0"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """Worker processes of one TF_CONFIG cluster; every one is killed by its PID at the end."""

    def __init__(self, tmp_path, size=2):
        self.hosts = [f"localhost:{p}" for p in _free_ports(size)]
        self.tmp_path = tmp_path
        self.procs = {}

    def start(self, index, *args):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": self.hosts}, "task": {"type": "worker", "index": index}}))
        env["TMPDIR"] = str(self.tmp_path / f"tmp{index}")  # to see what a worker leaves
        os.makedirs(env["TMPDIR"], exist_ok=True)
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "lth_keras.find_tickets", "--strategy=multi_worker", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.procs[index]

    def wait(self, index, timeout):
        out, err = self.procs[index].communicate(timeout=timeout)
        return self.procs[index].returncode, err

    def kill_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.kill_all()


def _assert_trained_like_one_process(cluster_dir, single_dir):
    two, one = lottery.TicketRun(str(cluster_dir)), lottery.TicketRun(str(single_dir))
    assert two.config()["replicas"] == 2 and one.config()["replicas"] == 1
    assert two.config()["hparams_hash"] == one.config()["hparams_hash"]
    assert two.finished_levels() == one.finished_levels() == [0, 1]
    # Same data, same global batch: the same sums up to float addition order.
    for level in (0, 1):
        a, b = two.metrics(level)["history"], one.metrics(level)["history"]
        assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b],
                                                             rel=1e-4)
    alive = [sum(int(m.sum()) for m in run.mask(1).values()) for run in (two, one)]
    assert alive[0] == alive[1]
    agree = np.mean([np.mean(two.mask(1)[k] == one.mask(1)[k]) for k in one.mask(1)])
    assert agree > 0.999


def test_two_workers_match_one_process_and_only_the_chief_writes(cluster, tiny_fashion_dir,
                                                                  tmp_path):
    common = [*TINY, f"--data_dir={tiny_fashion_dir}", "--max_epochs=2", "--patience=2"]
    out = tmp_path / "cluster"
    for index in (0, 1):
        cluster.start(index, *common, f"--output_dir={out}")
    for index in (0, 1):
        code, err = cluster.wait(index, timeout=300)
        assert code == 0, err[-3000:]
    in_process("find_tickets", *common, f"--output_dir={tmp_path / 'one'}")  # one replica

    _assert_trained_like_one_process(out, tmp_path / "one")
    # The non-chief worked in a private copy and removed it.
    assert os.listdir(tmp_path / "tmp1") == []


def test_a_worker_that_never_joins_is_a_clear_error(cluster, tiny_fashion_dir, tmp_path):
    out = tmp_path / "never"
    start = time.time()
    cluster.start(0, *TINY, f"--data_dir={tiny_fashion_dir}", "--max_epochs=2",
                  f"--output_dir={out}", "--worker_timeout=3")
    code, err = cluster.wait(0, timeout=120)
    assert code != 0  # killed: TensorFlow ignores SIGTERM while it waits for workers
    last = err.strip().splitlines()[-1]
    assert last.startswith("find_tickets: error: not every worker of TF_CONFIG joined"), last
    assert time.time() - start < 90
    assert not out.exists()


def test_a_dying_worker_is_a_clear_error(cluster, tiny_fashion_dir, tmp_path):
    out = tmp_path / "dying"
    args = [*TINY, f"--data_dir={tiny_fashion_dir}", "--max_epochs=50", "--patience=50",
            f"--output_dir={out}"]
    cluster.start(0, *args)
    cluster.start(1, *args)
    checkpoint = out / "levels" / "level_00" / "checkpoint.npz"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline:
        assert cluster.procs[0].poll() is None, cluster.procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(cluster.procs[1].pid, signal.SIGKILL)
    code, err = cluster.wait(0, timeout=120)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("find_tickets: error: a worker of the cluster stopped"), last
    # What was written stays readable and is resumable.
    assert (out / "config.json").exists() and (out / "theta_0.npz").exists()


# ---------------------------------------------------------------------------
# The JAX engine: processes joined by jax.distributed (JAX_COORDINATOR_ADDRESS, ...,
# as srun's environment would give them), one CPU device each, gradients over gloo.
# ---------------------------------------------------------------------------

def _start_jax_process(coordinator, index, count, tmp_path, *args):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(count),
               JAX_PROCESS_ID=str(index), TMPDIR=str(tmp_path / f"jax_tmp{index}"))
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "lth_keras.find_tickets", "--strategy=multi_worker", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def jax_processes():
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_jax_processes_match_one_process_and_only_the_first_writes(jax_processes,
                                                                    tiny_fashion_dir, tmp_path):
    pytest.importorskip("jax")
    common = [*TINY, f"--data_dir={tiny_fashion_dir}", "--max_epochs=2", "--patience=2"]
    out = tmp_path / "cluster"
    coordinator = f"localhost:{_free_ports(1)[0]}"
    for index in (0, 1):
        jax_processes.append(_start_jax_process(coordinator, index, 2, tmp_path, *common,
                                                f"--output_dir={out}"))
    for proc in jax_processes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    single = run_binary("lth_keras.find_tickets", *common, f"--output_dir={tmp_path / 'one'}",
                        env=dict(os.environ, KERAS_BACKEND="jax"))
    assert single.returncode == 0, single.stderr[-3000:]

    _assert_trained_like_one_process(out, tmp_path / "one")
    assert lottery.TicketRun(str(out)).config()["environment"]["processes"] == 2
    assert os.listdir(tmp_path / "jax_tmp1") == []  # the second worked in a private copy


def test_a_jax_process_that_never_joins_is_a_clear_error(jax_processes, tiny_fashion_dir,
                                                          tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "never"
    start = time.time()
    proc = _start_jax_process(f"localhost:{_free_ports(1)[0]}", 0, 2, tmp_path, *TINY,
                              f"--data_dir={tiny_fashion_dir}", "--max_epochs=2",
                              f"--output_dir={out}", "--worker_timeout=2")
    jax_processes.append(proc)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("find_tickets: error: not every process of the cluster joined"), last
    assert time.time() - start < 60
    assert not out.exists()
