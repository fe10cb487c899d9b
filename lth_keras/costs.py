"""What training costs: images processed, wall time and theoretical FLOPs.

FLOPs count the multiply-adds of the convolutions and dense layers, two FLOPs
each (BatchNorm, activations and pooling are a few percent of a ResNet's and
are left out). With a mask, only the surviving weights count: that is the
saving a sparse kernel could reach, not what a dense GPU kernel spends. A
training step costs three forward passes (forward, and backward for the
activations and the weights).
"""

import numpy as np

TRAINING_PASSES = 3  # forward + backward (gradients of inputs and of weights)


def forward_flops(model, masks=None):
    """FLOPs of one image's forward pass: {"dense": ..., "masked": ...}.

    `masks` is {kernel path: 0/1 array} for the prunable kernels (None: dense).
    """
    dense = masked = 0
    for layer in model._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not hasattr(layer, "output"):
            continue
        shape = tuple(kernel.shape)
        if len(shape) == 4:  # a convolution: every output position uses every weight
            positions = int(np.prod(layer.output.shape[1:3]))
        elif len(shape) == 2:
            positions = 1
        else:
            continue
        alive = int(np.prod(shape))
        if masks is not None and kernel.path in masks:
            alive = int(np.count_nonzero(masks[kernel.path]))
        dense += 2 * positions * int(np.prod(shape))
        masked += 2 * positions * alive
    return {"dense": dense, "masked": masked}


def level_cost(model, masks, history):
    """The cost of one trained level from its per-epoch history (images, seconds)."""
    per_image = forward_flops(model, masks)
    images = int(sum(epoch.get("images", 0) for epoch in history))
    return {
        "images": images,
        "seconds": float(sum(epoch.get("seconds", 0.0) for epoch in history)),
        "forward_flops_per_image": per_image,
        "training_flops": {k: TRAINING_PASSES * v * images for k, v in per_image.items()},
    }


def format_flops(flops):
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


# Training images of a source before the validation carve (docs/protocol.md "Data").
SOURCE_TRAIN_IMAGES = {"fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


def train_images(dataset, train_fraction=1.0, val_fraction=0.1):
    """Training images of a source (after the validation carve) or of a Table-1 target."""
    from lth_keras.datasets.targets import TARGETS

    if dataset in SOURCE_TRAIN_IMAGES:
        n = SOURCE_TRAIN_IMAGES[dataset] - round(SOURCE_TRAIN_IMAGES[dataset] * val_fraction)
    elif dataset in TARGETS:
        n = TARGETS[dataset].train
    else:
        raise ValueError(f"no known size for dataset {dataset!r}")
    return round(n * train_fraction)


def grid_cost(runs, *, rounds, epochs_per_level, forward, prunable, prune_rate=0.2,
              val_fraction=0.1, source_train_fraction=1.0):
    """Images and training FLOPs of grid runs (lth_keras.grid.GridRun), assuming every level
    trains `epochs_per_level` epochs (early stopping makes it fewer: max_epochs is an
    upper bound) and every prunable layer is at the level's density.

    forward: dense forward FLOPs of one image; prunable: the part of it in prunable
    kernels. Returns {"runs", "levels", "images", "training_flops": {"dense", "masked"}}.
    """
    from lth_keras import settings

    total = {"runs": 0, "levels": 0, "images": 0, "training_flops": {"dense": 0, "masked": 0}}
    for run in runs:
        values = run.values
        dataset = values.get("source") or values.get("target")
        per_epoch = train_images(dataset, values.get("train_fraction", source_train_fraction),
                                 val_fraction)
        listed = settings.parse_levels(values.get("levels"), "levels")
        levels = ([0] if values.get("scratch") else listed if listed is not None
                  else range(rounds + 1))
        total["runs"] += 1
        for level in levels:
            images = per_epoch * epochs_per_level
            density = (1 - prune_rate) ** level
            total["levels"] += 1
            total["images"] += images
            total["training_flops"]["dense"] += TRAINING_PASSES * forward * images
            total["training_flops"]["masked"] += TRAINING_PASSES * images * (
                forward - prunable * (1 - density))
    return total


def paper_cost(preset, runs, images_per_s, epochs=None):
    """Markdown: what the paper's protocol costs, before running any of it.

    Images, training FLOPs (dense, and at each level's density) and hours at each
    throughput of `images_per_s` (img/s) of one source-seed ticket search and of the
    whole grid. preset: {settings group: settings} of the tickets preset
    (settings.from_arguments(settings.FIND_TICKETS, ...) of flags/paper.cfg); runs: the grid's
    runs (grid.runs_of, flags/paper_grid.cfg). `epochs` per level: None is the
    preset's max_epochs, an upper bound that early stopping cuts.
    """
    from lth_keras import models, settings

    model_settings, data = preset[settings.Model], preset[settings.Data]
    pruning, size = preset[settings.Pruning], preset[settings.Model].image_size
    model = models.build_model(model_settings.model, input_shape=(size, size, 3),
                               num_classes=10, seed=0)
    flops = forward_flops(model)
    head = 2 * int(np.prod(model.get_layer(models.HEAD_NAME).kernel.shape))
    epochs = epochs or preset[settings.Training].max_epochs
    common = dict(rounds=pruning.rounds, epochs_per_level=epochs,
                  forward=flops["dense"], prunable=flops["dense"] - head,
                  prune_rate=pruning.prune_rate, val_fraction=data.val_fraction,
                  source_train_fraction=data.train_fraction)
    search = [r for r in runs if r.name == "tickets/cifar10-seed0"]
    rows = [("one ticket search (CIFAR-10, one seed)", grid_cost(search, **common)),
            (f"the paper grid ({len(runs)} runs)", grid_cost(runs, **common))]
    rates = [float(r) for r in images_per_s]
    lines = [f"# What the paper's protocol costs: {model_settings.model} at {size} px, "
             f"{pruning.rounds + 1} levels, {epochs} epochs per level",
             "", f"Forward pass: {format_flops(flops['dense'])} per image; training "
             f"counts {TRAINING_PASSES} passes. Masked FLOPs assume every prunable "
             "layer at the level's density (what sparse kernels could save; dense GPU kernels "
             "spend the dense figure).", "",
             "| what | levels | training images | training FLOPs, dense | with the masks | "
             + " | ".join(f"hours at {r:,.0f} img/s" for r in rates) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(rates)]
    for label, cost in rows:
        hours = " | ".join(f"{cost['images'] / r / 3600:,.1f}" for r in rates)
        lines.append(f"| {label} | {cost['levels']:,} | {cost['images']:,} | "
                     f"{format_flops(cost['training_flops']['dense'])} | "
                     f"{format_flops(cost['training_flops']['masked'])} | {hours} |")
    return "\n".join(lines) + "\n"
