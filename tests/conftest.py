"""Shared test set-up: quiet TensorFlow, tiny data in the original file formats."""

import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never reach the network: tfds would hang ~200 s offline.
os.environ["LTH_KERAS_NO_NETWORK"] = "1"
# Decoded image folders are cached per test session, not in the user's ~/.cache.
_CACHE = __import__("tempfile").mkdtemp(prefix="lth_keras_test_cache_")
os.environ["LTH_KERAS_CACHE"] = os.path.join(_CACHE, "images")
# ... and so is the JAX engine's persistent compilation cache.
os.environ["LTH_KERAS_COMPILATION_CACHE"] = os.path.join(_CACHE, "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The files that take longest (over 80 s each with --durations=0 on 2 cores, longest
# first). xdist hands whole files to its two workers in collection order; xdist's own
# order (most tests first) left test_transfer.py and test_gpu_mini.py to the end, and
# one worker idle for the last 100 s.
LONGEST_FIRST = ["test_engines.py", "test_transfer.py", "test_stability.py",
                 "test_crash_safety.py", "test_find_tickets.py", "test_distributed.py", "test_training.py",
                 "test_multi_worker.py", "test_gpu_mini.py", "test_api.py",
                 "test_experiment.py", "test_settings.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_sessionfinish(session):
    shutil.rmtree(_CACHE, ignore_errors=True)  # each process's own caches


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


def make_colour_folder(root):
    """Four colour classes as PNG files in the paper's folder layout: a small non-natural
    target that every clone has (../shared/data may be missing)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200),
               "yellow": (200, 200, 30)}
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        for name, colour in colours.items():
            os.makedirs(os.path.join(root, split, name))
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 40, size=(20, 20, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(
                    os.path.join(root, split, name, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="session")
def colour_target(tmp_path_factory):
    return make_colour_folder(tmp_path_factory.mktemp("target") / "colours")


@pytest.fixture(scope="session")
def tiny_fashion_dir(tmp_path_factory):
    return make_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


def run_binary(module, *args, timeout=300, **popen):
    """Runs `python -m module args` in a fresh process; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=popen.pop("cwd", REPO), **popen)


SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
HISTOLOGY = os.path.join(SHARED_DATA, "histology_nuclei")


def needs_shared_data(*names):
    """Skips a test cleanly when any of these folders of ../shared/data is not there."""
    missing = [n for n in names if not os.path.isdir(os.path.join(SHARED_DATA, n))]
    return pytest.mark.skipif(bool(missing), reason=f"../shared/data lacks {', '.join(missing)}")


needs_histology = needs_shared_data("histology_nuclei")

# A tiny find_tickets run: LeNet at 16 px, levels 0..TICKET_ROUNDS, a few seconds, with an
# epoch checkpoint after every epoch (not every 10 minutes) for the kill-and-resume tests.
TICKET_ROUNDS = 2
TINY_TICKETS = ["--model=lenet_300_100", "--image_size=16", f"--rounds={TICKET_ROUNDS}",
                "--max_epochs=3", "--patience=2", "--rewind_epoch=1", "--batch_size=32",
                "--learning_rate=0.01", "--deterministic", "--seed=3", "--checkpoint_every=0"]


def find_tiny_tickets(data_dir, output_dir, *extra):
    return run_binary("lth_keras.find_tickets", "--source=fashion_mnist",
                      f"--data_dir={data_dir}", f"--output_dir={output_dir}", *TINY_TICKETS,
                      *extra)


def in_process(binary, *args):
    """What `python -m lth_keras.<binary> args` computes, run here through the one way into
    the protocols the binary also takes (runner.run, after the same settings parsing): a
    fixture's run then costs its training, not a process start and a TensorFlow import
    (~7 s of CPU each). Returns the run; a bad setting raises."""
    from lth_keras import runner, settings

    chosen, given = settings.from_arguments(runner.GROUPS[binary], args)
    return runner.run(binary, chosen, given, verbose=False)


def fabricated_record(kind, args=(), *, dataset="fashion_mnist", num_classes=3,
                      identity_extra=None, **extra):
    """A config.json as lth_keras writes it for a `kind` run of the settings `args` on
    `dataset` (fingerprint dataset * 3), with `extra` top-level entries: what tests that
    fabricate run directories without training write."""
    from lth_keras import runner, settings
    from lth_keras.version import __version__

    chosen, _ = settings.from_arguments(runner.GROUPS[kind], args)
    ident = settings.identity(chosen, dataset * 3, **(identity_extra or {}))
    return {"kind": kind, "hparams": {**settings.result_values(chosen), **(identity_extra or {})},
            "hparams_hash": settings.identity_hash(ident), "identity": ident,
            "settings": settings.record(chosen),
            "dataset": {"name": dataset, "num_classes": num_classes,
                        "class_names": [f"c{i}" for i in range(num_classes)],
                        "sizes": {"train": 10, "val": 5, "test": 5},
                        "fingerprint": dataset * 3},
            "input": {"steps_per_epoch": 8, "channels": 3, "batch_size": 32},
            "replicas": 1, "environment": {"lth_keras": __version__, "engine": "tensorflow"},
            **extra}


def refused_in_process(binary, output_dir, *args):
    """in_process(binary, args) that must refuse: the UserError's message, the line its
    binary prints after "<binary>: error: " (tested as such where the binary runs), after
    checking it is one line and that nothing was written at output_dir."""
    from lth_keras.errors import UserError

    with pytest.raises(UserError) as refused:
        in_process(binary, *args, f"--output_dir={output_dir}")
    message = str(refused.value)
    assert message and "\n" not in message, message
    assert not os.path.exists(output_dir), os.listdir(output_dir)
    return message


@pytest.fixture
def absl_log(caplog):
    """The text of what absl logs in this process from here on: an in_process run's
    lines, as its binary's stderr shows them."""
    import logging

    caplog.set_level(logging.INFO, logger="absl")
    return lambda: caplog.text


def find_tiny_tickets_here(data_dir, output_dir, *extra):
    """find_tiny_tickets in this process (in_process); returns the TicketRun."""
    return in_process("find_tickets", "--source=fashion_mnist", f"--data_dir={data_dir}",
                      f"--output_dir={output_dir}", *TINY_TICKETS, *extra)


@pytest.fixture(scope="session")
def tiny_tickets(tiny_fashion_dir, tmp_path_factory):
    """A finished tiny find_tickets run (a TicketRun); tests must not modify it."""
    return find_tiny_tickets_here(tiny_fashion_dir,
                                  str(tmp_path_factory.mktemp("run") / "tickets"))


def expected_start_digest(run, body, mask):
    """Digest of m ⊙ body with the target head that a fresh model of a transfer run's
    seed gets: what its level must have started from."""
    from lth_keras import settings, weights
    from lth_keras.lottery import architecture, fine_tuning

    record = run.record()
    source, target = architecture.build_target_model(
        record.model, record.dataset.num_classes,
        fine_tuning.head_seed(record.settings[settings.Training].seed, record.dataset.name))
    weights.load_ticket(source, body, mask)
    return weights.digest(weights.snapshot(target))


def kill_find_tickets_mid_level(args, output_dir, level=1, poll=0.05, **popen):
    """Starts `python -m lth_keras.find_tickets args`, SIGKILLs it as soon as `level` has
    an epoch checkpoint, and checks that the level was left unfinished."""
    from lth_keras import lottery

    proc = subprocess.Popen([sys.executable, "-m", "lth_keras.find_tickets", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    checkpoint = os.path.join(output_dir, "levels", f"level_{level:02d}", "checkpoint.npz")
    deadline = time.time() + 240
    while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(checkpoint), f"the run finished level {level} before it was killed"
    assert not lottery.TicketRun(output_dir).is_finished(level)
