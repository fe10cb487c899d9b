"""Weights and masks of a model, addressed by variable path, never by position.

Masks are variables too (they count in `get_weights()`), so every snapshot,
rewind and comparison goes through `{variable.path: array}` dictionaries.
"""

import numpy as np

from lth_keras import artifacts
from lth_keras.errors import WeightsMismatchError


def masked_layers(model):
    """The masked layers of `model`. Imports Keras (layers.py) only here, when there is a
    model: the run code that imports this module must stay light until settings are
    checked."""
    from lth_keras import layers

    return layers.masked_layers(model)


def snapshot(model):
    """Every variable of the model (masks and BN statistics included)."""
    return {v.path: np.array(v.numpy()) for v in model.variables}


def mask_paths(model):
    return [layer.mask.path for layer in masked_layers(model)]


def get_masks(model):
    """{kernel path: mask} of every prunable kernel, in layer order."""
    return {layer.kernel.path: np.array(layer.mask.numpy()) for layer in masked_layers(model)}


def get_kernels(model):
    """{kernel path: stored kernel} of every prunable kernel, in layer order."""
    return {layer.kernel.path: np.array(layer.kernel.numpy()) for layer in masked_layers(model)}


def assign(model, weights, skip=()):
    """Sets the model's variables from {path: array}.

    Every variable not in `skip` must be present with the same shape: a ticket
    from another architecture or input size fails here with a clear message.
    """
    by_path = {v.path: v for v in model.variables}
    wanted = [p for p in by_path if p not in skip]
    missing = [p for p in wanted if p not in weights]
    if missing:
        raise WeightsMismatchError(
            f"{len(missing)} of the model's variables are not in the stored weights "
            f"(first: {missing[0]}): they come from a different model")
    for path in wanted:
        value = weights[path]
        if tuple(value.shape) != tuple(by_path[path].shape):
            raise WeightsMismatchError(
                f"{path} has shape {tuple(value.shape)} in the stored weights but "
                f"{tuple(by_path[path].shape)} in the model: different model or input size")
        by_path[path].assign(value)


def set_masks(model, masks):
    """Installs {kernel path: mask} and zeroes the pruned weights in the stored kernels."""
    layers = {layer.kernel.path: layer for layer in masked_layers(model)}
    if set(masks) != set(layers):
        raise WeightsMismatchError("the masks do not name the model's prunable kernels")
    for path, mask in masks.items():
        layer = layers[path]
        if tuple(np.shape(mask)) != tuple(layer.mask.shape):
            raise WeightsMismatchError(
                f"mask {path} has shape {np.shape(mask)}, the model's kernel "
                f"{tuple(layer.mask.shape)}: different model or input size")
        mask = np.asarray(mask, np.float32)
        layer.mask.assign(mask)
        layer.kernel.assign(layer.kernel.numpy() * mask)


def load_ticket(model, start_weights, masks, skip=()):
    """Sets the model to m ⊙ θ: θ from `start_weights` (its masks ignored), then m."""
    assign(model, start_weights, skip=set(skip) | set(mask_paths(model)))
    set_masks(model, masks)


def count_parameters(model):
    """The trainable parameters: not the masks (bookkeeping) and not BN's moving
    statistics (running averages, not learnt), as a model's parameter count is read."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def digest(weights_by_path):
    """sha256 of {path: array}, independent of dict order."""
    paths = sorted(weights_by_path)
    return artifacts.array_digest(np.array(paths), *(weights_by_path[p] for p in paths))


def dense_masks(model):
    """An all-ones mask for every prunable kernel (the dense network, level 0)."""
    return {path: np.ones_like(mask) for path, mask in get_masks(model).items()}


def check_mask_held(model, masks):
    """Guards the central invariant after training: the masks are exactly `masks`,
    and pruned weights are exactly 0."""
    check_arrays_hold_masks(snapshot(model), masks)


def check_arrays_hold_masks(arrays, masks):
    """The same invariant in weights as stored ({variable path: array}): every mask variable
    is exactly its mask of `masks` ({kernel path: mask}), and every pruned weight exactly
    0. `masks` must name at least one kernel (a check of nothing is not a check)."""
    if not masks:
        raise AssertionError("no masks to check")
    for path, mask in masks.items():
        mask = np.asarray(mask)
        stored = arrays.get(path.rsplit("/", 1)[0] + "/mask")
        if stored is not None and not np.array_equal(stored, mask):
            raise AssertionError(f"the mask of {path} changed during training")
        if np.any(arrays[path][mask == 0] != 0):
            raise AssertionError(f"pruned weights of {path} moved during training")
