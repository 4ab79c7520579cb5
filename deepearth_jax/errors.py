"""The errors that mean bad input, not a bug: the command lines print them as one line and exit 2.

Everything else that escapes a command (a JAX shape error, a missing dict key, a plain ValueError) is a bug:
`cli.run_command` prints its traceback and says so. Raise one of these (or a subclass) for anything the user
can fix: a path, a file's contents, a flag, a config field. The ValueError bases keep `except ValueError`
callers (and tests) working for the errors that were ValueErrors before this module existed.

This module imports nothing of the project: every layer may raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message is one line that names the file, field or flag and the fix."""


class ConfigError(UserError, ValueError):
    """A config field of the wrong type or out of range, or a config file that cannot be loaded."""


class StoreError(UserError):
    """A store that cannot be opened or written as asked."""


class SplitError(UserError, ValueError):
    """A split that cannot be made or read as asked."""


class TrainError(UserError, ValueError):
    """A run that cannot start or go on."""


class WorkdirError(UserError, ValueError):
    """The workdir cannot be used (a regular file, unwritable, foreign, or locked by another trainer)."""


class CliError(UserError):
    """Bad input on the command line."""
