"""lth_keras: lottery tickets found on natural images, transferred to non-natural ones.

The Python API (lth_keras/api.py): lth_keras.find_tickets, transfer, stability,
experiment, analyze, plan and export; settings objects in lth_keras.settings. Imported on first use, so that
`import lth_keras` stays light.
"""

from lth_keras.version import __version__

API = ("find_tickets", "transfer", "stability", "experiment", "analyze", "plan", "export")
__all__ = ["__version__", *API]


def __getattr__(name):
    # The binaries share these names (python -m lth_keras.find_tickets): run as
    # __main__ they never become attributes here, so the functions are found.
    if name in API:
        from lth_keras import api
        return getattr(api, name)
    raise AttributeError(f"module 'lth_keras' has no attribute {name!r}")
