"""epoch loop / per-step sync: what the Trainer's epoch loop saves over the loop it
replaced.

The Trainer's epoch loop (steps_per_execution steps a tf.function call, sums on the
device, one host read an epoch) against the per-step-sync loop of lth_keras 0.2 (one
call and one host read a step), on the same pre-made batches, epochs alternating.
"""

import time

from tools.benchmark.harness import FLAGS, interleave, per_step_sync_epoch, ratios, summary


def sync_free_epoch(strategy, train_steps, dataset, steps, per_call):
    """Seconds of an epoch as the Trainer runs it now: `per_call` steps per tf.function
    call, sums kept on the device, one host read at the end."""
    import tensorflow as tf

    start = time.perf_counter()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    totals = tf.zeros(3, tf.float64)
    for done in range(0, steps, per_call):
        totals += train_steps(iterator, tf.constant(min(per_call, steps - done)))
    totals.numpy()
    return time.perf_counter() - start


def measure(runtime, masked, pipeline, config, masked_step, dataset, steps):
    """The Trainer's epoch loop on `masked` against per-step-sync epochs of masked_step
    (its compiled step) over `dataset`, a pre-made dataset of `steps` batches, epochs
    interleaved."""
    from lth_keras.training import Trainer

    trainer = Trainer(masked, pipeline, config, runtime, verbose=False)
    strategy, per_call = runtime.strategy, runtime.steps_per_execution

    def per_step_sync():
        stamps = per_step_sync_epoch(strategy, masked_step, dataset)
        return stamps[-1] - stamps[0]

    times = interleave(
        {"epoch_loop": lambda: sync_free_epoch(strategy, trainer.loop._train_steps, dataset,
                                               steps, per_call),
         "per_step_sync": per_step_sync},
        max(2, FLAGS.epochs), 1)
    return {"epoch_loop": summary([t / steps for t in times["epoch_loop"]], FLAGS.batch_size),
            "per_step_sync": summary([t / steps for t in times["per_step_sync"]],
                                     FLAGS.batch_size),
            **ratios(times["epoch_loop"], times["per_step_sync"]),
            "steps_per_epoch": steps, "steps_per_execution": per_call}
