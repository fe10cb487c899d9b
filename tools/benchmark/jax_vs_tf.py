"""JAX / TF engine: the JAX engine's training step against the TensorFlow engine's.

On --engines_model (ResNet-20), on CPU (JAX_PLATFORMS=cpu, no GPU visible).
KERAS_BACKEND is fixed at import, so each engine is a long-lived --engine_worker
process under its own KERAS_BACKEND (the JAX one never imports TensorFlow). Each
builds the masked model (80% pruned) and times the Trainer's real epoch loop,
Trainer.loop.train_epoch, over a synthetic split of --epoch_steps batches: input
included (tf.data on TF; on JAX the data on the device, cropped inside the jitted
step, metrics read once per epoch). After one warm-up (compiling) epoch each, the
processes run an epoch in turn (A B, B A, A B ...) for --epochs rounds; step time =
epoch time / steps. Skipped with a note when JAX is not installed; --noengines turns
it off.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

from tools import fixtures
from tools.benchmark.harness import (FLAGS, PACKAGE, SPECS, interleave, ratios, summary,
                                     synthetic_dataset)

ENGINES = ("jax", "tensorflow")  # A / B of the ratio


def serve():
    """--engine_worker: engine_worker with its replies on the original stdout; anything
    else printed goes to stderr."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message):
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    engine_worker(reply)


def engine_worker(reply):
    """The engine KERAS_BACKEND names trains a masked --engines_model.

    After one warm-up epoch (compilation) it replies with its set-up, then runs one
    epoch per line of stdin, replying with its seconds per step; it ends at EOF.
    `reply(dict)` writes one JSON line to the main process.
    """
    if os.environ.get("KERAS_BACKEND") == "jax":
        try:
            importlib.import_module("jax")
        except ImportError as e:
            reply({"skipped": f"JAX is not installed ({e})"})
            return
    from lth_keras.datasets import InputPlan
    from lth_keras.settings import Training
    from lth_keras.training import Trainer

    spec, batch = SPECS[FLAGS.engines_model], FLAGS.batch_size
    runtime = fixtures.setup()
    plan = InputPlan(synthetic_dataset(spec, train_images=max(2, FLAGS.epoch_steps) * batch),
                     image_size=spec.image_size, batch_size=batch, seed=0)
    model = fixtures.masked_model(runtime, spec.model, spec.image_size, spec.num_classes)
    loop = Trainer(model, plan, Training(), runtime, verbose=False).loop

    def epoch_s(epoch):
        start = time.perf_counter()
        loop.train_epoch(epoch)
        return time.perf_counter() - start

    reply({"engine": runtime.name, "environment": runtime.environment(),
           "steps_per_epoch": plan.steps_per_epoch, "warmup_epoch_s": epoch_s(0)})
    for epoch, _ in enumerate(sys.stdin, start=1):
        seconds = epoch_s(epoch)
        reply({"epoch_s": seconds, "step_s": seconds / plan.steps_per_epoch})


class EngineWorker:
    """This package with --engine_worker under one KERAS_BACKEND, on CPU."""

    def __init__(self, backend):
        self.backend = backend
        self._log = tempfile.TemporaryFile("w+")  # its stderr, read if it fails
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": "-1"}
        self._proc = subprocess.Popen(
            [sys.executable, PACKAGE, "--engine_worker",
             f"--batch_size={FLAGS.batch_size}", f"--epoch_steps={FLAGS.epoch_steps}",
             f"--engines_model={FLAGS.engines_model}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)

    def receive(self):
        """The worker's next reply (a dict); RuntimeError with its stderr if it ended."""
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._log.seek(0)
            raise RuntimeError(f"the {self.backend} engine worker failed (exit "
                               f"{self._proc.returncode}):\n{self._log.read()[-3000:]}")
        return json.loads(line)

    def epoch(self):
        """Seconds per step of one more training epoch."""
        try:
            self._proc.stdin.write("go\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended: receive() reports why
        return self.receive()["step_s"]

    def close(self, kill=False):
        """Ends the worker: EOF on its stdin (it returns when idle), or kill."""
        if kill:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._log.close()


def measure():
    """The JAX engine's epoch loop against the TF engine's, epochs interleaved."""
    workers, ready, finished = {}, {}, False
    try:
        for backend in ENGINES:  # both set up and compile at once: untimed
            workers[backend] = EngineWorker(backend)
        for backend, w in workers.items():
            ready[backend] = w.receive()
            if "skipped" in ready[backend]:
                return {"skipped": ready[backend]["skipped"]}
        times = interleave({backend: w.epoch for backend, w in workers.items()},
                           max(2, FLAGS.epochs), 0)
        finished = True
    finally:
        for w in workers.values():  # a skip or a failure leaves the other one busy
            w.close(kill=not finished)
    spec = SPECS[FLAGS.engines_model]
    return {"model": spec.model, "image_size": spec.image_size,
            "steps_per_epoch": ready["tensorflow"]["steps_per_epoch"],
            **{backend: {**summary(times[backend], FLAGS.batch_size),
                         "warmup_epoch_s": ready[backend]["warmup_epoch_s"],
                         "environment": ready[backend]["environment"]}
               for backend in ENGINES},
            **ratios(times["jax"], times["tensorflow"])}
