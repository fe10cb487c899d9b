"""mirrored 2 / 1: what a second device brings the masked step.

MirroredStrategy over 2 logical CPU devices against 1 device. The logical devices
must exist before TensorFlow starts and a process has one strategy, so each side is
an isolated-memory worker of its own: sequential processes, not interleaved.
Skipped on GPU machines (a GPU run uses its GPUs).
"""

from tools.benchmark.harness import run_worker


def measure(model):
    """Both sides' worker results (peak RSS included) and 2 / 1 of their step times."""
    one = run_worker("custom_masked", model, 1)
    two = run_worker("custom_masked", model, 2)
    return {"devices_1": one, "devices_2": two, "ratio": two["median_s"] / one["median_s"]}
