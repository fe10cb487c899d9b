"""Runs one engine check in a fresh process (the engine is KERAS_BACKEND, fixed at import).

  python tests/engine_worker.py float64 OUT.npz   ResNet-8 in float64, 5 epochs of one step,
                                                  then BN statistics re-estimated (OUT's
                                                  precise_bn/ arrays)
  python tests/engine_worker.py bfloat16 OUT.npz  a masked ResNet-8, 3 mixed-precision steps

Run by test_engines.py under each engine; it compares what they write.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lth_keras import engines, models, settings, training, weights  # noqa: E402
from lth_keras.datasets import ImageDataset, InputPlan, Split  # noqa: E402


def tiny_dataset(train=32, size=20, seed=0):
    """Learnable 4-class RGB images: class c brightens the c-th quarter of the rows."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.arange(n) % 4
        images = rng.integers(0, 90, size=(n, size, size, 3))
        for i, c in enumerate(labels):
            images[i, c * size // 4:(c + 1) * size // 4] += 150
        return Split(images.astype(np.uint8), labels)

    return ImageDataset("tiny", ("a", "b", "c", "d"), split(train), split(16), split(16))


def float64_steps(out):
    """Five training steps (five one-step epochs) of ResNet-8 in float64, with their
    losses, the validation metrics after each, and the final weights; then, in the same
    process (one start-up and runtime for both), precise_bn's arrays."""
    keras.config.set_floatx("float64")
    runtime = engines.setup(settings.Run(deterministic=True))
    plan = InputPlan(tiny_dataset(), image_size=16, batch_size=32, seed=0)
    with runtime.scope():
        model = models.build_model("resnet8", input_shape=(16, 16, 3), num_classes=4, seed=0)
    theta_0 = weights.digest(weights.snapshot(model))
    # Momentum 0.875 is exact in float32: Keras's TensorFlow backend rounds a Python
    # momentum through float32 before casting it to float64 (0.9 -> 0.8999999762),
    # its JAX backend does not.
    config = settings.Training(learning_rate=0.05, momentum=0.875, weight_decay=1e-3,
                               max_epochs=5, patience=10)
    result = training.Trainer(model, plan, config, runtime, verbose=False).fit()
    history = result.history
    np.savez(out, theta_0=np.array(theta_0), train_loss=[h["train_loss"] for h in history],
             val_loss=[h["val_loss"] for h in history],
             val_accuracy=[h["val_accuracy"] for h in history],
             **{f"w/{k}": v for k, v in weights.snapshot(model).items()},
             **{f"precise_bn/{k}": v for k, v in precise_bn(runtime).items()})


def bfloat16_steps(out):
    """A masked ResNet-8 trained with bfloat16 mixed precision, momentum and
    weight decay: what the pruned weights are afterwards."""
    config = settings.Training(learning_rate=0.1, weight_decay=1e-2, max_epochs=1,
                               mixed_precision="bfloat16")
    runtime = engines.setup(training=config)
    plan = InputPlan(tiny_dataset(train=96), image_size=16, batch_size=32, seed=0)
    with runtime.scope():
        model = models.build_model("resnet8", input_shape=(16, 16, 3), num_classes=4, seed=0)
    rng = np.random.default_rng(1)
    masks = {k: (rng.random(m.shape) < 0.2).astype(np.float32)
             for k, m in weights.get_masks(model).items()}
    weights.set_masks(model, masks)
    before = weights.get_kernels(model)
    training.Trainer(model, plan, config, runtime, verbose=False).fit()
    np.savez(out, policy=np.array(keras.mixed_precision.global_policy().name),
             **{f"mask/{k}": v for k, v in masks.items()},
             **{f"before/{k}": v for k, v in before.items()},
             **{f"after/{k}": v for k, v in weights.get_kernels(model).items()},
             **{f"stored_mask/{k}": v for k, v in weights.get_masks(model).items()})


def precise_bn(runtime):
    """ResNet-8 in float64 after one training epoch: every BatchNormalization's moving
    statistics as the engine re-estimates them from epoch 1's first 3 batches, and as
    computed here from those batches (no crop, so a batch is (pixels / 255 - mean) / std
    of the plan's images, in float32 as both engines feed it): the mean over the batches
    of each layer's input mean and (biased) variance in training mode."""
    plan = InputPlan(tiny_dataset(train=128, size=16), image_size=16, batch_size=32, seed=0,
                     crop="none")
    with runtime.scope():
        model = models.build_model("resnet8", input_shape=(16, 16, 3), num_classes=4, seed=0)
    config = settings.Training(learning_rate=0.05, max_epochs=1, precise_bn=3)
    trainer = training.Trainer(model, plan, config, runtime, verbose=False)
    trainer.loop.train_epoch(0)
    layers = training.batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    trainer.loop.recompute_batchnorm(1, 3)
    engine = {layer.name: (np.array(layer.moving_mean.numpy()),
                           np.array(layer.moving_variance.numpy())) for layer in layers}
    inputs = keras.Model(model.inputs, [layer.input for layer in layers])
    order, _ = plan.train_plan(1)
    images = plan.split("train").images
    means, variances = [], []
    for batch in order[:3]:
        x = (images[batch].astype(np.float32) / np.float32(255) - plan.mean) / plan.std
        h = [np.asarray(t) for t in inputs(x, training=True)]
        means.append([t.mean(axis=(0, 1, 2)) for t in h])
        variances.append([t.var(axis=(0, 1, 2)) for t in h])
    arrays = {"momenta_after": np.array([layer.momentum for layer in layers]),
              "momenta_before": np.array(momenta)}
    for i, layer in enumerate(layers):
        arrays[f"engine_mean/{layer.name}"], arrays[f"engine_var/{layer.name}"] = engine[layer.name]
        arrays[f"mean/{layer.name}"] = np.mean([m[i] for m in means], axis=0)
        arrays[f"var/{layer.name}"] = np.mean([v[i] for v in variances], axis=0)
    return arrays


if __name__ == "__main__":
    {"float64": float64_steps, "bfloat16": bfloat16_steps}[sys.argv[1]](sys.argv[2])
