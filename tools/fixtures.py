"""What the measuring tools build: the runtime, synthetic data and ticket-like models.

tools/benchmark and tools/gpu_check measure on the same things; they are made here
once. `setup` is the one engines.setup call of tools/, so that a change of its
signature is adapted in one line. Nothing here imports TensorFlow or JAX at import
time (gpu_check runs where TensorFlow is missing).
"""


def setup(mixed_precision="off", cpu_devices=0):
    """The Runtime of the engine KERAS_BACKEND names, seed 0; call once per process,
    before any model. cpu_devices > 1: MirroredStrategy over that many logical CPU
    devices (0: the engine's default devices)."""
    from lth_keras import engines, settings

    run = settings.Run(strategy="mirrored" if cpu_devices > 1 else "default",
                       cpu_devices=cpu_devices)
    return engines.setup(run, settings.Training(mixed_precision=mixed_precision))


def synthetic_dataset(name, shape, num_classes, train, held_out, seed=0):
    """Seeded random uint8 images of `shape` (H, W, C), labels cycling over the classes:
    `train` training images, `held_out` each for validation and test. The same in
    every process and configuration that asks, so no files are needed."""
    import numpy as np

    from lth_keras.datasets import ImageDataset, Split

    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, size=(n,) + tuple(shape), dtype=np.uint8)
        return Split(images, np.arange(n) % num_classes)

    return ImageDataset(name, tuple(f"c{i}" for i in range(num_classes)),
                        split(train), split(held_out), split(held_out))


def model(runtime, name, image_size, num_classes):
    """Model `name` for RGB images of image_size px, seed 0, built in the runtime's scope."""
    from lth_keras import models

    with runtime.scope():
        return models.build_model(name, input_shape=(image_size, image_size, 3),
                                  num_classes=num_classes, seed=0)


def mask_like_a_ticket(masked):
    """Masks 80% of the prunable weights by magnitude; returns the model. Mask values do
    not change a dense kernel's arithmetic; a ticket-like mask keeps it realistic."""
    from lth_keras import pruning, weights

    weights.set_masks(masked, pruning.prune(weights.get_kernels(masked),
                                            weights.get_masks(masked), 0.8))
    return masked


def masked_model(runtime, name, image_size, num_classes):
    """`model` with a ticket-like mask: what a ticket search trains."""
    return mask_like_a_ticket(model(runtime, name, image_size, num_classes))
