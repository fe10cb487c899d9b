"""Masked Conv2D and Dense layers: effective kernel = kernel ⊙ mask.

The mask is a non-trainable float variable of the kernel's shape. Because the
mask multiplies the kernel inside the graph, the gradient of a pruned weight is
exactly 0, so a fresh optimizer (zero momentum) can never revive it.
"""

import keras
from keras import ops

MASK_KEY = "mask"


class _MaskMixin:
    """Adds the mask variable and saves it next to kernel and bias."""

    def _build_mask(self):
        self.mask = self.add_weight(
            name="mask",
            shape=self._kernel.shape,
            initializer="ones",
            trainable=False,
            dtype=self.variable_dtype,
        )

    def masked_kernel(self):
        return ops.multiply(self.kernel, self.mask)

    # Keras 3 Dense/Conv save only kernel and bias; without these two methods the
    # mask would be silently dropped from `.weights.h5` and `.keras` files.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store[MASK_KEY] = self.mask

    def load_own_variables(self, store):
        if self.built and MASK_KEY not in store:
            raise ValueError(
                f"Layer '{self.name}': the weights file has no mask; it was not "
                "saved from a masked layer."
            )
        super().load_own_variables(store)
        if self.built:
            self.mask.assign(store[MASK_KEY])


@keras.saving.register_keras_serializable(package="lth_keras")
class MaskedConv2D(_MaskMixin, keras.layers.Conv2D):
    """Conv2D whose kernel is multiplied by a fixed binary mask."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, ops.multiply(kernel, self.mask))


@keras.saving.register_keras_serializable(package="lth_keras")
class MaskedDense(_MaskMixin, keras.layers.Dense):
    """Dense whose kernel is multiplied by a fixed binary mask."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, self.masked_kernel())
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


MASKED_LAYER_TYPES = (MaskedConv2D, MaskedDense)


def masked_layers(model):
    """The model's masked layers in a stable (creation) order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, MASKED_LAYER_TYPES)]
