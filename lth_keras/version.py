"""The version of lth_keras (setup.cfg reads it; run records carry it)."""

__version__ = "0.7.0"
