"""The errors a user can act on: each is printed by the binaries as one line, exit status 1.

Every one derives from UserError, so the binaries (cli.run), the grid's in-process
runs and the tests tell them from a bug with one isinstance. This module is the
ground floor: it imports nothing of lth_keras, so any module may raise these.
Each class also derives from the built-in error it refines (a bad setting is a
ValueError, damaged artifacts a RuntimeError), as they did before they lived here.
"""


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


class SettingsError(UserError, ValueError):
    """An impossible setting; its message names the flag."""


class DataError(UserError, ValueError):
    """A dataset that is missing, unreadable or unfit for the run."""


class ArtifactError(UserError, RuntimeError):
    """A run directory's file that is missing, damaged or from another run."""


class RunMismatchError(UserError):
    """A run directory that holds another run (other settings or data)."""


class ConfigurationError(UserError, ValueError):
    """The engine cannot run as asked (backend, devices, batch split)."""


class WeightsMismatchError(UserError, ValueError):
    """Weights (a ticket, a checkpoint) that do not fit the model they are loaded into."""


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite: the learning rate is too high for the model."""


class WorkerError(UserError, RuntimeError):
    """The workers of a multi-worker run disagree (other data, other finished levels)."""


class GridError(UserError, RuntimeError):
    """A grid run that failed or could not start; the grid reports it and goes on."""


class ExportError(UserError):
    """A run that cannot be exported as asked."""
