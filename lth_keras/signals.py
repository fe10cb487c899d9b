"""SIGINT and SIGTERM (Slurm's preemption) as a request to stop at the next safe point.

Its own light module: the binaries install the handlers before anything heavy
(TensorFlow, JAX) is imported.
"""

from absl import logging


class TrainingInterrupted(BaseException):
    """SIGINT or SIGTERM (Slurm's preemption) stopped the run; `checkpoint` holds its state.

    A BaseException, like KeyboardInterrupt: the handler raises it wherever the program
    is, and an `except Exception` there (a file reader's, a framework's import) must
    not turn it into a bad-file error or swallow it.
    """

    def __init__(self, signum, checkpoint=None):
        import signal

        self.signum = signum
        self.checkpoint = checkpoint
        where = (f"its state is in {checkpoint}" if checkpoint else "finished levels are kept")
        super().__init__(f"interrupted by {signal.Signals(signum).name}; {where}: run the same "
                         "command again to resume")


class _Interruptions:
    """SIGINT and SIGTERM as a request to stop training at the next safe point.

    While a Trainer trains, a signal only sets a flag: the loop stops after the
    step (or steps_per_execution steps) in flight, the Trainer writes the
    checkpoint and raises TrainingInterrupted. Elsewhere (loading data, pruning)
    the signal raises TrainingInterrupted at once; atomic writes leave no half
    file. A second Ctrl-C while training stops at once too. The first signal is
    remembered either way, so one whose exception was lost (raised inside a
    garbage-collector callback, which Python only prints) still stops the run when
    training starts.
    """

    def __init__(self):
        self.training = False
        self.signum = None

    def install(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if self.training:
                logging.warning("%s: stopping after the steps in flight and saving the state",
                                __import__("signal").Signals(signum).name)
                return
        raise TrainingInterrupted(signum)

    def requested(self):
        return self.signum is not None


interruptions = _Interruptions()
