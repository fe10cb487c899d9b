"""TensorBoard event files written without TensorFlow, for both engines.

tensorboard's own event-file writer and protos need no TensorFlow, so the JAX
engine's machines (which have none) write the same curves and HParams summaries
as the TensorFlow engine: `tensorboard --logdir outputs/` reads both.
"""

import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
    """Scalars and the HParams summary of one run (one TensorBoard run directory)."""

    def __init__(self, logdir):
        self._writer = EventFileWriter(logdir)

    def _add(self, summary, step):
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary))

    def scalar(self, tag, value, step):
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, simple_value=float(value))]), step)

    def hparams(self, hparams):
        """TensorBoard's HParams tab: scalars and strings only (others become strings)."""
        from tensorboard.plugins.hparams import summary_v2

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                  for k, v in hparams.items()}
        self._add(summary_v2.hparams_pb(values), step=0)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()
