"""Model registry: ResNet-50 (the paper's), ResNet-20, LeNet-300-100 and Conv-4.

Every model is a functional `keras.Model` whose body convolutions and dense
layers are `MaskedConv2D` / `MaskedDense` (prunable) and whose classifier is a
plain `keras.layers.Dense` named `HEAD_NAME` (never pruned; transfer replaces
it). Outputs are logits.

Initialisation (docs/protocol.md "Symbols"): Glorot-uniform kernels, zero biases,
BatchNorm gamma=1 / beta=0. Each kernel is drawn by numpy from its own seed,
derived from (model seed, layer name) with crc32, so θ_0 depends on the seed
alone: not on what else the process built before, and not on the backend (the
TensorFlow and JAX engines start from the same θ_0). Layer names are explicit
and unique because weights are snapshotted and rewound by variable path
(e.g. "stage2_block1_conv2/kernel").
"""

import math
import zlib

import keras
import numpy as np

from lth_keras.layers import MaskedConv2D, MaskedDense

HEAD_NAME = "head"

# He et al. / PyTorch value. Keras's default 1e-3 would be a silent departure
# from the reference ResNets (keras.applications uses 1.001e-5, the same up to
# a cuDNN lower bound that this TF path does not need).
BN_EPSILON = 1e-5


def _layer_seed(seed, name):
    """A stable 31-bit seed for layer `name` of a model built with `seed`.

    crc32, not hash(): Python salts str hashes per process.
    """
    return zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF


def glorot_uniform(shape, seed, dtype):
    """Glorot/Xavier-uniform values drawn by numpy: the same on every backend.

    U(-l, l) with l = sqrt(6 / (fan_in + fan_out)), fans as Keras computes them
    (a conv kernel's receptive field times its input / output channels).
    """
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    values = np.random.default_rng(seed).uniform(-limit, limit, size=shape)
    return values.astype(keras.backend.standardize_dtype(dtype))


def _initialise_kernels(layers, seed):
    """Draws every layer's kernel from (seed, layer name); biases and BN keep their
    constant initialisers (zeros, gamma=1, beta=0)."""
    for layer in layers:
        kernel = layer.kernel
        kernel.assign(glorot_uniform(tuple(kernel.shape), _layer_seed(seed, layer.name),
                                     kernel.dtype))


# Every kernel is drawn by _initialise_kernels (or replace_head) right after the layers
# are built, so they are built with zeros: Keras's own random draw would be thrown away,
# and on JAX it compiles a random-number kernel per kernel shape (13 s of a ResNet-20
# process on a CPU, before its first step).
_DRAWN_LATER = "zeros"


def _head(num_classes):
    """The classifier: a plain (unmasked) Dense producing logits; its kernel is drawn
    by _initialise_kernels."""
    return keras.layers.Dense(num_classes, kernel_initializer=_DRAWN_LATER,
                              bias_initializer="zeros", name=HEAD_NAME)


class _Builder:
    """Makes named, seeded layers for one model; shared by every architecture."""

    def __init__(self, seed, bn_momentum):
        self.seed = seed
        self.bn_momentum = bn_momentum

    def conv(self, x, filters, kernel_size, name, *, strides=1, padding="same",
             use_bias=True, activation=None):
        return MaskedConv2D(
            filters, kernel_size, strides=strides, padding=padding,
            use_bias=use_bias, activation=activation, kernel_initializer=_DRAWN_LATER,
            bias_initializer="zeros", name=name,
        )(x)

    def dense(self, x, units, name, *, activation=None):
        return MaskedDense(units, activation=activation, kernel_initializer=_DRAWN_LATER,
                           bias_initializer="zeros", name=name)(x)

    def bn(self, x, name):
        # Replicas must share batch statistics, so that the result does not depend
        # on the number of devices. On TensorFlow that is synchronized=True under
        # MirroredStrategy; under JAX's jit the batch mean is already over the
        # global batch, and Keras accepts synchronized=True only on TensorFlow.
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=BN_EPSILON,
            synchronized=keras.backend.backend() == "tensorflow",
            gamma_initializer="ones", beta_initializer="zeros", name=name,
        )(x)

    def conv_bn(self, x, filters, kernel_size, conv_name, bn_name, *,
                strides=1, padding="same", relu_name=None):
        """Conv (no bias) -> BN [-> ReLU if relu_name is given]."""
        # No conv bias: BN subtracts the batch mean right after, so a bias
        # would be a redundant (and unprunable) parameter.
        x = self.conv(x, filters, kernel_size, conv_name, strides=strides,
                      padding=padding, use_bias=False)
        x = self.bn(x, bn_name)
        if relu_name is not None:
            x = keras.layers.ReLU(name=relu_name)(x)
        return x

    def residual_out(self, x, shortcut, prefix):
        x = keras.layers.Add(name=f"{prefix}_add")([shortcut, x])
        return keras.layers.ReLU(name=f"{prefix}_out")(x)

    def classifier(self, x, num_classes):
        return _head(num_classes)(x)


def _finish(inputs, outputs, name, seed):
    """Wrap as a functional model, draw its kernels, and check that names and paths are unique."""
    model = keras.Model(inputs, outputs, name=name)
    _initialise_kernels([layer for layer in model._flatten_layers(include_self=False)
                         if isinstance(layer, (MaskedConv2D, MaskedDense))
                         or layer.name == HEAD_NAME], seed)
    layer_names = [layer.name for layer in model.layers]
    paths = [v.path for v in model.weights]
    for kind, items in (("layer name", layer_names), ("variable path", paths)):
        duplicates = sorted({i for i in items if items.count(i) > 1})
        if duplicates:
            raise ValueError(f"model '{name}': duplicate {kind}s {duplicates}")
    return model


# --------------------------------------------------------------------------- #
# ResNet-50 (He et al. 2015, v1 as keras.applications.ResNet50)
# --------------------------------------------------------------------------- #

# (bottleneck width, blocks, stride of the first block); output = 4 x width.
_RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _bottleneck_block(b, x, width, strides, projection, prefix):
    """1x1 (width) -> 3x3 (width) -> 1x1 (4 width), plus the shortcut.

    The stride sits on the first 1x1 conv, as in the original paper and in
    keras.applications ResNet50 (v1); torchvision's "v1.5" puts it on the 3x3.
    """
    if projection:
        shortcut = b.conv_bn(x, 4 * width, 1, f"{prefix}_proj",
                             f"{prefix}_proj_bn", strides=strides, padding="valid")
    else:
        shortcut = x
    x = b.conv_bn(x, width, 1, f"{prefix}_conv1", f"{prefix}_bn1",
                  strides=strides, padding="valid", relu_name=f"{prefix}_relu1")
    x = b.conv_bn(x, width, 3, f"{prefix}_conv2", f"{prefix}_bn2",
                  relu_name=f"{prefix}_relu2")
    x = b.conv_bn(x, 4 * width, 1, f"{prefix}_conv3", f"{prefix}_bn3",
                  padding="valid")
    return b.residual_out(x, shortcut, prefix)


def resnet50(*, input_shape, num_classes, seed, bn_momentum=0.9):
    """ResNet-50 v1: the paper's appendix layout, Dense head on avg-pooled features."""
    b = _Builder(seed, bn_momentum)
    inputs = keras.Input(shape=input_shape, name="input")
    # Explicit symmetric zero padding + "valid", as keras.applications and
    # PyTorch do; TF's "same" with stride 2 would pad asymmetrically.
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = b.conv_bn(x, 64, 7, "conv1", "bn1", strides=2, padding="valid",
                  relu_name="relu1")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for s, (width, blocks, stride) in enumerate(_RESNET50_STAGES, start=1):
        for i in range(1, blocks + 1):
            x = _bottleneck_block(
                b, x, width, strides=stride if i == 1 else 1,
                projection=(i == 1), prefix=f"stage{s}_block{i}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _finish(inputs, b.classifier(x, num_classes), "resnet50", seed)


# --------------------------------------------------------------------------- #
# CIFAR-style ResNets (He et al. 2015, section 4.2): 6n + 2 layers
# --------------------------------------------------------------------------- #

_CIFAR_STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride); n basic blocks each


def _basic_block(b, x, filters, strides, projection, prefix):
    """3x3 -> 3x3 plus the shortcut (1x1 conv + BN projection where the shape changes)."""
    if projection:
        shortcut = b.conv_bn(x, filters, 1, f"{prefix}_proj",
                             f"{prefix}_proj_bn", strides=strides, padding="valid")
    else:
        shortcut = x
    x = b.conv_bn(x, filters, 3, f"{prefix}_conv1", f"{prefix}_bn1",
                  strides=strides, relu_name=f"{prefix}_relu1")
    x = b.conv_bn(x, filters, 3, f"{prefix}_conv2", f"{prefix}_bn2")
    return b.residual_out(x, shortcut, prefix)


def _cifar_resnet(n, name, *, input_shape, num_classes, seed, bn_momentum):
    """3x3 conv 16, then 3 stages x n basic blocks of 16/32/64 channels, global
    average pooling and the head: 6n + 2 layers."""
    b = _Builder(seed, bn_momentum)
    inputs = keras.Input(shape=input_shape, name="input")
    x = b.conv_bn(inputs, 16, 3, "conv1", "bn1", relu_name="relu1")
    in_channels = 16
    for s, (filters, stride) in enumerate(_CIFAR_STAGES, start=1):
        for i in range(1, n + 1):
            strides = stride if i == 1 else 1
            x = _basic_block(
                b, x, filters, strides=strides,
                projection=(strides != 1 or in_channels != filters),
                prefix=f"stage{s}_block{i}")
            in_channels = filters
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _finish(inputs, b.classifier(x, num_classes), name, seed)


def resnet20(*, input_shape, num_classes, seed, bn_momentum=0.9):
    """ResNet-20 (n = 3): the quick presets' network."""
    return _cifar_resnet(3, "resnet20", input_shape=input_shape, num_classes=num_classes,
                         seed=seed, bn_momentum=bn_momentum)


def resnet8(*, input_shape, num_classes, seed, bn_momentum=0.9):
    """ResNet-8 (n = 1): every layer kind of ResNet-20 (BatchNorm, projection shortcuts)
    at a third of its depth, for checks where depth only costs time (the engine tests)."""
    return _cifar_resnet(1, "resnet8", input_shape=input_shape, num_classes=num_classes,
                         seed=seed, bn_momentum=bn_momentum)


# --------------------------------------------------------------------------- #
# Small fully connected / convolutional baselines (Frankle & Carbin 2019)
# --------------------------------------------------------------------------- #

def lenet_300_100(*, input_shape, num_classes, seed, bn_momentum=0.9):
    """LeNet-300-100: flatten -> 300 ReLU -> 100 ReLU -> head. No BN (momentum unused)."""
    del bn_momentum  # uniform signature across the registry
    b = _Builder(seed, None)
    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = b.dense(x, 300, "fc1", activation="relu")
    x = b.dense(x, 100, "fc2", activation="relu")
    return _finish(inputs, b.classifier(x, num_classes), "lenet_300_100", seed)


def conv4(*, input_shape, num_classes, seed, bn_momentum=0.9):
    """Conv-4: conv64-conv64-pool-conv128-conv128-pool-fc256-fc256-head, ReLU, no BN.

    As in Frankle & Carbin (2019): 3x3 "same" convolutions with biases, 2x2
    max-pools; no BatchNorm, so bn_momentum is unused.
    """
    del bn_momentum  # uniform signature across the registry
    b = _Builder(seed, None)
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    conv_index = 0
    for pool_index, filters in enumerate((64, 128), start=1):
        for _ in range(2):
            conv_index += 1
            x = b.conv(x, filters, 3, f"conv{conv_index}", activation="relu")
        x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = b.dense(x, 256, "fc1", activation="relu")
    x = b.dense(x, 256, "fc2", activation="relu")
    return _finish(inputs, b.classifier(x, num_classes), "conv4", seed)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

BUILDERS = {  # settings.MODELS names them
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet8": resnet8,
    "lenet_300_100": lenet_300_100,
    "conv4": conv4,
}


def build_model(name, *, input_shape, num_classes, seed, bn_momentum=0.9):
    """Build registered model `name`; its weights are a function of `seed` alone."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(BUILDERS)}")
    return BUILDERS[name](input_shape=tuple(input_shape), num_classes=num_classes,
                        seed=seed, bn_momentum=bn_momentum)


def head_layer(model):
    """The classifier head (the layer named HEAD_NAME)."""
    return model.get_layer(HEAD_NAME)


def replace_head(model, num_classes, kernel_seed):
    """A new model sharing every layer of `model` but the head, which is fresh.

    The body's layers (hence its variable objects, masks included) are shared,
    not copied: training the new model changes `model`'s body too. The new
    head is a plain Dense whose Glorot-uniform kernel is drawn from `kernel_seed`
    itself (a transfer's own stream, lottery.fine_tuning.head_seed), not from the model
    seed's per-layer stream that θ_0's head came from.
    """
    features = head_layer(model).input
    head = _head(num_classes)
    outputs = head(features)
    head.kernel.assign(glorot_uniform(tuple(head.kernel.shape), kernel_seed, head.kernel.dtype))
    # model.input (not .inputs) keeps the input structure: a single tensor stays
    # a single tensor, so calling the new model does not warn.
    return keras.Model(model.input, outputs, name=model.name)


# --------------------------------------------------------------------------- #
# Plain-layer folding (export, and the benchmark's dense baseline)
# --------------------------------------------------------------------------- #

# The plain class each masked class folds into.
_PLAIN_CLASS = {MaskedConv2D: keras.layers.Conv2D, MaskedDense: keras.layers.Dense}


def _plain_layer(layer):
    """A plain Conv2D / Dense with `layer`'s config, or None for an unmasked layer.

    Only the keys the plain class itself serialises are kept, so a mask-specific
    config key (there is none today) could never reach the plain constructor.
    """
    plain_class = next((p for m, p in _PLAIN_CLASS.items() if type(layer) is m), None)
    if plain_class is None:
        if isinstance(layer, tuple(_PLAIN_CLASS)):
            raise TypeError(f"cannot fold {type(layer).__name__} '{layer.name}': "
                            "an unknown subclass of a masked layer")
        return None
    config = layer.get_config()
    probe = plain_class(1, 1) if plain_class is keras.layers.Conv2D else plain_class(1)
    return plain_class.from_config({k: v for k, v in config.items()
                                    if k in probe.get_config()})


def fold_masks(model):
    """The same functional model with plain Conv2D/Dense layers and kernel ⊙ mask folded in.

    Layer names, configs and the graph are kept; every MaskedConv2D/MaskedDense
    becomes a plain layer whose kernel is kernel * mask, and every other
    variable (biases, BN statistics, the head) is copied by variable path. The
    result has no mask variables, so it loads and converts without lth_keras.
    Build it under the same runtime scope as `model` if it will be trained.
    """
    def clone(layer):
        plain = _plain_layer(layer)
        return plain if plain is not None else layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    values = {v.path: np.array(v.numpy()) for v in model.variables}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, tuple(_PLAIN_CLASS)):
            values[layer.kernel.path] = values[layer.kernel.path] * values[layer.mask.path]
    for variable in folded.variables:
        if variable.path not in values:
            raise ValueError(f"fold_masks: {variable.path} has no counterpart in '{model.name}'")
        variable.assign(values[variable.path])
    return folded
