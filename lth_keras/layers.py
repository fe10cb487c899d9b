"""Masked Conv2D and Dense layers: a fixed 0/1 mask beside the kernel.

The stored kernel holds the ticket's zeros: `weights.set_masks` zeroes the pruned
weights when it installs a mask, and training masks the kernels' gradients
(`mask_gradients`, which both engines apply), so with a fresh optimizer (zero
momentum) and L2 weight decay (whose gradient is 0 at a 0 weight) a pruned weight
stays exactly 0 and effective kernel = stored kernel = kernel ⊙ mask. The layers
therefore compute with the stored kernel: a forward multiply by the mask would be
a second pass over every weight per step (13% of LeNet-300-100's step on a CPU),
where the masked gradient is one, and one that XLA fuses into the optimizer's
update. Whoever trains these layers outside lth_keras must mask the gradients too
(`weights.check_mask_held` tells if a pruned weight moved).
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
    """Conv2D with a fixed binary mask; its stored kernel is 0 where the mask is."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()


@keras.saving.register_keras_serializable(package="lth_keras")
class MaskedDense(_MaskMixin, keras.layers.Dense):
    """Dense with a fixed binary mask; its stored kernel is 0 where the mask is."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()


MASKED_LAYER_TYPES = (MaskedConv2D, MaskedDense)


def masked_layers(model):
    """The model's masked layers in a stable (creation) order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, MASKED_LAYER_TYPES)]


def gradient_masks(model, variables):
    """For each of `variables` (e.g. the trainable ones), its layer's mask variable if it
    is a masked kernel, else None: what `mask_gradients` multiplies by."""
    by_kernel = {id(layer.kernel): layer.mask for layer in masked_layers(model)}
    return [by_kernel.get(id(v)) for v in variables]


def mask_gradients(gradients, masks):
    """The gradients with every masked kernel's gradient multiplied by its mask (values of
    `gradient_masks`, or their arrays): pruned weights get exactly 0."""
    return [g if m is None else ops.multiply(g, ops.cast(m, g.dtype))
            for g, m in zip(gradients, masks)]
