"""Errors that describe a user's mistake; every command prints them as one line (exit 2).

Each message names the bad value: the config key, the file, the column or the checkpoint.
Everything else (a bug, an XLA failure) keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave; the message names it."""


class ConfigError(UserError):
    """A configuration value is invalid; the message names the key."""


class DataError(UserError):
    """A data source is missing, empty or has no usable clip; the message names it."""


class TaskError(UserError):
    """A task spec or its data is unusable; the message names the file, column or class."""


class ConversionError(UserError):
    """A weight file cannot be converted; the message says which tensor or value."""
