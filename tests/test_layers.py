"""Masked layers: masks hold the ticket's zeros through training and survive every save format."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lth_keras import weights
from lth_keras.layers import (MaskedConv2D, MaskedDense, gradient_masks, mask_gradients,
                              masked_layers)


def _model(seed=0):
    inputs = keras.Input((8, 8, 3))
    x = MaskedConv2D(4, 3, name="conv", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = MaskedDense(5, name="fc", kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="tiny")


def _random_masks(model, seed=0):
    rng = np.random.default_rng(seed)
    masks = {k: (rng.random(v.shape) < 0.5).astype(np.float32)
             for k, v in weights.get_masks(model).items()}
    weights.set_masks(model, masks)
    return masks


def test_masked_gradients_keep_pruned_weights_at_zero():
    # The layers compute with the stored kernel, which holds the zeros: set_masks zeroes
    # the pruned weights, and mask_gradients keeps them 0 through SGD with momentum.
    model = _model()
    masks = _random_masks(model)
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    layers = {layer.kernel.path: layer for layer in masked_layers(model)}
    for path, layer in layers.items():  # effective kernel = stored kernel = kernel ⊙ mask
        np.testing.assert_array_equal(layer.kernel.numpy(), layer.kernel.numpy() * masks[path])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    grad_masks = gradient_masks(model, model.trainable_variables)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x)))
        raw = tape.gradient(loss, model.trainable_variables)
        grads = mask_gradients(raw, grad_masks)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for path, kernel in weights.get_kernels(model).items():
        assert np.all(kernel[masks[path] == 0] == 0), path
        assert np.any(kernel[masks[path] == 1] != 0), path
    # Unmasked, the same gradients would have moved pruned weights.
    fc = next(i for i, v in enumerate(model.trainable_variables) if v.path == "fc/kernel")
    assert np.any(raw[fc].numpy()[masks["fc/kernel"] == 0] != 0)


def test_set_masks_zeroes_pruned_stored_weights():
    model = _model()
    masks = _random_masks(model)
    for path, kernel in weights.get_kernels(model).items():
        assert np.all(kernel[masks[path] == 0] == 0)
        assert np.all(kernel[masks[path] == 1] != 0)


def test_mask_is_not_trainable():
    model = _model()
    trainable = {v.path for v in model.trainable_variables}
    assert {layer.mask.path for layer in masked_layers(model)}.isdisjoint(trainable)


@pytest.mark.parametrize("fmt", ["weights.h5", "keras", "checkpoint"])
def test_masks_round_trip(tmp_path, fmt):
    model = _model()
    masks = _random_masks(model)
    restored = _model(seed=7)
    if fmt == "weights.h5":
        model.save_weights(tmp_path / "m.weights.h5")
        restored.load_weights(tmp_path / "m.weights.h5")
    elif fmt == "keras":
        model.save(tmp_path / "m.keras")
        restored = keras.models.load_model(tmp_path / "m.keras")
    else:
        path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=restored).read(path).assert_consumed()
    for path, mask in weights.get_masks(restored).items():
        np.testing.assert_array_equal(mask, masks[path])
    x = np.random.default_rng(1).random((3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x).numpy(), restored(x).numpy())


def test_loading_plain_weights_into_masked_layers_fails(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, name="fc")(x)
    plain = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    plain.save_weights(tmp_path / "plain.weights.h5")
    with pytest.raises(ValueError, match="the weights file has no mask"):
        _model().load_weights(tmp_path / "plain.weights.h5")


def test_config_round_trip():
    layer = MaskedConv2D(6, 3, strides=2, padding="same", use_bias=False, name="c")
    clone = MaskedConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    dense = MaskedDense(4, activation="relu", name="d")
    assert MaskedDense.from_config(dense.get_config()).get_config() == dense.get_config()


def test_assign_refuses_other_architecture():
    model = _model()
    other_inputs = keras.Input((8, 8, 3))
    x = MaskedConv2D(8, 3, name="conv")(other_inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = MaskedDense(5, name="fc")(x)
    other = keras.Model(other_inputs, keras.layers.Dense(3, name="head")(x))
    with pytest.raises(weights.WeightsMismatchError, match="conv/"):
        weights.assign(model, weights.snapshot(other))
