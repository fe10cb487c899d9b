"""Flags and process set-up shared by the binaries (find_tickets, transfer, ...).

Importing this module defines the common flags once; each binary adds its own.
"""

import os
import sys

from absl import app, flags, logging

from lth_keras import settings

# TensorFlow's C++ info and warning lines (oneDNN, CUDA probing, grappler) drown the
# progress of a run; errors still show. An explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS

# Every flag is made from the settings dataclasses (lth_keras/settings.py): the common
# groups here, each binary's own group in its module.
settings.define_flags(settings.COMMON)


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def check(condition, message):
    if not condition:
        raise UserError(message)


def from_flags(groups):
    """{group: settings object} from the parsed flags."""
    return settings.from_flags(groups)


def train(argv, groups, run_function, **kwargs):
    """The main() of find_tickets and transfer: `api.<run_function>` on the settings the
    flags give (and `kwargs`), then the run's summary and where its artifacts are."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lth_keras import api, runs

    run = getattr(api, run_function)(from_flags(groups), **kwargs)
    print(runs.format_summary(run.summary(), title=run.title()), end="")
    print(f"artifacts: {run.path}")


def forwarded_flags():
    """The common settings given on this command line that the grid passes on."""
    from lth_keras import grid

    return [FLAGS[name].serialize() for name in sorted(grid.forwarded_fields())
            if FLAGS[name].present]


# Errors a user can act on, each printed as one line. They are looked up only in the
# modules this run has imported: a settings error must not wait for TensorFlow's import
# (5-6 s) to be reported, and an exception of a module never imported cannot occur.
USER_ERRORS = {
    "lth_keras.datasets.base": ("DataError",),
    "lth_keras.weights": ("WeightsMismatchError",),
    "lth_keras.training": ("TrainingDivergedError", "WorkerError"),
    "lth_keras.artifacts": ("ArtifactError",),
    "lth_keras.engines": ("ConfigurationError",),
    "lth_keras.grid": ("GridError",),
}


def is_user_error(e):
    """Whether `e` is a problem the user can act on (printed as one line, no traceback)."""
    kinds = [UserError, settings.SettingsError]
    for module, names in USER_ERRORS.items():
        if module in sys.modules:
            kinds += [getattr(sys.modules[module], name) for name in names]
    return isinstance(e, tuple(kinds))


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
            if is_user_error(e):
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
