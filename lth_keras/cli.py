"""Flags and process set-up shared by the binaries (find_tickets, transfer, ...).

Importing this module defines the common flags once; each binary adds its own.
"""

import os
import sys

from absl import app, flags, logging

from lth_keras import settings
from lth_keras.errors import UserError

# TensorFlow's C++ info and warning lines (oneDNN, CUDA probing, grappler) drown the
# progress of a run; errors still show. An explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS

# Every flag is made from the settings dataclasses (lth_keras/settings.py): the common
# groups here, each binary's own group in its module.
settings.define_flags(settings.COMMON)


def no_arguments(argv):
    """Every binary takes flags only."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")


def protocol_main(kind):
    """The main of a protocol's binary (find_tickets, transfer, stability): its command
    line through the one way in (runner.run), then what the run ends with (its summary, or
    a stability run's report) and where its artifacts are."""
    def main(argv):
        no_arguments(argv)
        from lth_keras import runner

        # What the command line names is kept; a transfer or stability run takes the rest
        # of its recipe from its tickets.
        run = runner.run(kind, *settings.from_command_line(runner.GROUPS[kind]))
        print(run.report(), end="")
        print(f"artifacts: {run.path}")

    return main


def forwarded_values():
    """{field: value} of the common settings given on this command line that the grid
    passes on to every run."""
    import dataclasses

    from lth_keras import grid

    chosen, named = settings.from_command_line(settings.COMMON)
    return {f.name: getattr(obj, f.name) for group, obj in chosen.items()
            for f in dataclasses.fields(group)
            if f.name in named and f.name in grid.forwarded_fields()}


def _cluster_error(e):
    """Whether `e` is what a collective raises when a peer worker dies or its link breaks."""
    engines = sys.modules.get("lth_keras.engines")
    runtime = engines and engines.process_runtime()
    return runtime is not None and isinstance(e, runtime.cluster_errors())


def run(main):
    """app.run(main), turning expected failures into one clear line and exit status 1, and
    SIGINT/SIGTERM into a saved state, one line and exit status 128 + the signal."""
    from lth_keras.signals import TrainingInterrupted, interruptions

    program = os.path.basename(sys.argv[0]).removesuffix(".py")

    def fail(message):
        logging.flush()
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(1)

    def guarded(argv):
        interruptions.install()
        try:
            return main(argv)
        except TrainingInterrupted as e:
            logging.flush()
            print(f"{program}: {e}", file=sys.stderr)
            sys.exit(128 + e.signum)
        except Exception as e:
            if isinstance(e, UserError):
                fail(e)
            if isinstance(e, OSError) and e.errno is not None:
                # Disk full, read-only file systems, permissions: the OS's words and the path.
                fail(": ".join(str(x) for x in (e.strerror, e.filename, e.filename2)
                               if x is not None))
            if not _cluster_error(e):
                raise
            text = getattr(e, "message", None) or str(e)
            first = next((line for line in text.splitlines() if line.strip()), "")
            fail(f"a worker of the cluster stopped or cannot be reached ({first.strip()}); "
                 "restart every worker with the same command: finished levels are kept")

    app.run(guarded)
