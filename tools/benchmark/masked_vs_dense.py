"""masked / dense: what the masks cost a training step.

The Trainer's compiled step (Trainer.loop._train_step) on the masked model and on
models.fold_masks of it (plain Conv2D/Dense, same architecture and initial weights),
alternating step by step on the same pre-made batches, without XLA (the CPU default)
and with it (the GPU default, which fuses the gradient mask into the optimizer's
update). Target <= 1.03.
"""

import numpy as np

from tools import fixtures
from tools.benchmark.harness import (FLAGS, cycling_step, interleave, ratios, summary)

MASKED_DENSE_TARGET = 1.03


def build_pair(spec, runtime, num_classes):
    """(masked model with an 80%-pruned mask, the dense baseline: plain layers, same θ_0)."""
    from lth_keras import models

    masked = fixtures.model(runtime, spec.model, spec.image_size, num_classes)
    with runtime.scope():
        dense = models.fold_masks(masked)  # all-ones masks: the plain architecture
    return fixtures.mask_like_a_ticket(masked), dense


def train_step(model, pipeline, config, runtime):
    """The Trainer's compiled training step of `model`."""
    from lth_keras.training import Trainer

    return Trainer(model, pipeline, config, runtime, verbose=False).loop._train_step


def measure(spec, runtime, pipeline, config, batches):
    """({"masked_vs_dense": ..., "masked_vs_dense_xla": ...}, (masked model, its step))
    on the distributed `batches`; the step is the one of the runtime's own jit_compile."""
    from lth_keras import weights

    num_classes = pipeline.dataset.num_classes
    results = {}
    default_jit = runtime.jit_compile
    for key, jit in (("masked_vs_dense", False), ("masked_vs_dense_xla", True)):
        runtime.jit_compile = jit
        masked, dense = build_pair(spec, runtime, num_classes)
        masked_step = train_step(masked, pipeline, config, runtime)
        dense_step = train_step(dense, pipeline, config, runtime)
        times = interleave({"masked": cycling_step(masked_step, batches),
                            "dense": cycling_step(dense_step, batches)},
                           max(2, FLAGS.steps), FLAGS.warmup)
        results[key] = {
            "masked": summary(times["masked"], FLAGS.batch_size),
            "dense": summary(times["dense"], FLAGS.batch_size),
            **ratios(times["masked"], times["dense"]), "target": MASKED_DENSE_TARGET,
            "jit_compile": jit,
            "masked_weights": int(sum(int(np.prod(k.shape)) for k in
                                      weights.get_masks(masked).values()))}
        if jit == default_jit:
            default_pair = masked, masked_step
    runtime.jit_compile = default_jit
    return results, default_pair
