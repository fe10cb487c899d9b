"""large dataset: memory and time to the first step when the data outgrows a
comfortable in-memory constant (--large_dataset).

ResNet-20 at 224 px on a synthetic folder of --large_dataset_images 256-px images
(2.4 GB decoded for 12,000) under MirroredStrategy over 2 logical CPU devices, in
three processes: the first run (decodes the folder into the on-disk cache), a later
run (memory-maps it) and one without the cache (decodes into memory). Each reports
its load time, its time from process start to the end of the first step, its step
time, its peak RSS and its anonymous / file-backed RSS.
"""

import os
import sys
import time

from tools import fixtures
from tools.benchmark.harness import FLAGS, memory_mib, run_worker

LARGE_CLASSES = 10
LARGE_SIZE = 256          # the files' side; image_size 224 stores them at 256
LARGE_IMAGE_SIZE = 224


def folder():
    return os.path.join(FLAGS.large_dataset_dir, "folder")


def write_large_folder(root, n, seed=0):
    """`n` smooth random 256-px PNGs in train/val/test (80/10/10) class folders, written
    once (a folder that has them all is reused)."""
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        with open(done) as f:
            if int(f.read()) == n:
                return root
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = {"train": n - 2 * (n // 10), "val": n // 10, "test": n // 10}
    k = 0
    for split, count in counts.items():
        for i in range(count):
            label = i % LARGE_CLASSES
            directory = os.path.join(root, split, f"c{label}")
            os.makedirs(directory, exist_ok=True)
            # An 8x8 colour grid upsampled: compresses well, decodes like a photograph.
            grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(grid).resize((LARGE_SIZE, LARGE_SIZE), Image.BILINEAR)
            image.save(os.path.join(directory, f"{k:06d}.png"), compress_level=1)
            k += 1
    with open(done, "w") as f:
        f.write(str(n))
    return root


def worker(cache_dir, process_start):
    """--worker=large_dataset: trains ResNet-20 at 224 px on the folder under
    MirroredStrategy over 2 logical CPU devices; times loading and the first step
    from `process_start` (the process's start, perf_counter)."""
    from lth_keras import datasets
    from lth_keras.datasets import InputPlan
    from lth_keras.settings import Training
    from lth_keras.training import Trainer

    runtime = fixtures.setup(cpu_devices=2)
    runtime.steps_per_execution = 1  # stop right after the first step to time it
    imported = time.perf_counter() - process_start
    dataset = datasets.load_dataset(folder(), image_size=LARGE_IMAGE_SIZE, cache_dir=cache_dir)
    loaded = time.perf_counter() - process_start
    plan = InputPlan(dataset, image_size=LARGE_IMAGE_SIZE, batch_size=FLAGS.batch_size, seed=0)
    model = fixtures.masked_model(runtime, "resnet20", LARGE_IMAGE_SIZE, dataset.num_classes)
    trainer = Trainer(model, plan, Training(), runtime, verbose=False)
    steps = FLAGS.large_dataset_steps or plan.steps_per_epoch
    calls = {"n": 0}

    def stop_after(n):
        def stop():
            calls["n"] += 1
            return calls["n"] > n
        return stop

    sums, done = trainer.loop.train_epoch(0, stop=stop_after(1))
    first_step = time.perf_counter() - process_start
    calls["n"] = 0
    rest = time.perf_counter()
    sums, done = trainer.loop.train_epoch(0, start_step=done, sums=sums,
                                          stop=stop_after(steps - done))
    rest = time.perf_counter() - rest
    return {"cache_dir": cache_dir, "images": len(dataset.train) + len(dataset.val)
            + len(dataset.test), "dataset_bytes": int(sum(
                dataset.split(s).images.nbytes for s in ("train", "val", "test"))),
            "replicas": runtime.num_replicas, "import_and_setup_s": imported,
            "load_s": loaded - imported, "time_to_first_step_s": first_step,
            "steps": done, "steps_per_epoch": plan.steps_per_epoch,
            "step_s": rest / max(1, done - 1), "cached": bool(dataset.details.get("cache")),
            **memory_mib()}


def measure():
    """The three runs in fresh processes: the folder's first load (decoded into the
    cache), a later load (memory-mapped), and the same without the cache (in memory)."""
    root = write_large_folder(folder(), FLAGS.large_dataset_images)
    cache_dir = os.path.join(FLAGS.large_dataset_dir, "cache")
    if os.path.isdir(cache_dir):
        import shutil
        shutil.rmtree(cache_dir)
    results = {}
    for name, cache in (("cache, first run", cache_dir), ("cache, later runs", cache_dir),
                        ("in memory, no cache", "")):
        print(f"[benchmark] large dataset: {name}", file=sys.stderr, flush=True)
        results[name] = run_worker("large_dataset", "resnet20", devices=2,
                                   extra=[f"--large_dataset_cache={cache}",
                                          f"--large_dataset_dir={FLAGS.large_dataset_dir}",
                                          f"--large_dataset_steps={FLAGS.large_dataset_steps}"])
    return {"folder": root, "images": FLAGS.large_dataset_images, "runs": results}
