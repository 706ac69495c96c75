"""Errors that a user's settings cause, not a bug: ``cli.py`` prints them as one line and exits with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work: refused when a class was built from the config (a ``ValueError`` in its
    ``__init__``), or when a run starts with settings that do not fit together."""
