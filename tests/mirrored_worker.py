"""Trains one epoch (3 steps) of ResNet-8 in float64 on N logical CPU devices; saves the
weights.

Run by test_distributed.py in a fresh process, under the engine KERAS_BACKEND names
(logical devices and the distribution must be set up before the framework starts,
once per process).
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lth_keras import engines, models, settings, training, weights  # noqa: E402
from lth_keras.datasets import InputPlan, Split, load_source  # noqa: E402


def main(num_devices, data_dir, out):
    # float64 makes summation order irrelevant, so any difference left is a real one.
    keras.config.set_floatx("float64")
    runtime = engines.setup(settings.Run(strategy="mirrored" if num_devices > 1 else "default",
                                         cpu_devices=num_devices))
    assert runtime.num_replicas == num_devices
    dataset = load_source("fashion_mnist", data_dir=data_dir, seed=0)
    # Three steps of the global batch: each one all-reduces the gradients, scales the loss
    # and synchronises BatchNorm's batch statistics; more steps only add float64 CPU time.
    train = Split(dataset.train.images[:96], dataset.train.labels[:96])
    plan = InputPlan(dataclasses.replace(dataset, train=train), image_size=16, batch_size=32,
                     seed=0)
    with runtime.scope():
        model = models.build_model("resnet8", input_shape=(16, 16, 3), num_classes=10, seed=0)
    config = settings.Training(learning_rate=0.05, weight_decay=1e-3, max_epochs=1)
    result = training.Trainer(model, plan, config, runtime, verbose=False).fit()
    np.savez(out, train_loss=result.history[0]["train_loss"], **weights.snapshot(model))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
