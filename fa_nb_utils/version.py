"""The package's version: the one place it is written (pyproject.toml reads it from here).

It is part of every run's key, so a new version recomputes runs instead of resuming or reusing
runs trained by other code."""
__version__ = "0.2.1"
