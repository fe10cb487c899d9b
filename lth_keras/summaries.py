"""TensorBoard event files written without TensorFlow, for both engines.

tensorboard's protos and record framing need no TensorFlow, so the JAX engine's
machines (which have none) write the same curves and HParams summaries as the
TensorFlow engine: `tensorboard --logdir outputs/` reads both. (tensorboard's own
EventFileWriter would import TensorFlow wherever it is installed, for its file
system layer; a plain file does here.)
"""

import os
import socket
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class SummaryWriter:
    """Scalars and the HParams summary of one run, in a new event file of `logdir`."""

    def __init__(self, logdir):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._records = RecordWriter(open(self.path, "ab"))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        # Every writer starts (or restarts) its level's curves: TensorBoard drops what
        # earlier writers in this directory logged (a killed run's epochs after its last
        # checkpoint would otherwise show twice); the trainer logs the checkpoint's
        # history again.
        restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._write(event_pb2.Event(wall_time=time.time(), step=0, session_log=restart))

    def _write(self, event):
        self._records.write(event.SerializeToString())

    def _add(self, summary, step):
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

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
        self._records.flush()

    def close(self):
        if not self._records.closed:
            self._records.close()
