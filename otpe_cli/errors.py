"""The refusals and failures a user can meet, each said in one sentence (no traceback), without
torch: the command line answers them before the numerics are imported."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is refused; the message names the key."""


class DataError(RuntimeError):
    """A data set is missing, unreadable or inconsistent; the message says which file and why."""


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or belongs to a different run configuration."""


class OutputError(RuntimeError):
    """A run file that cannot be written (a full disk, a quota, a vanished folder)."""


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


#: errors that are the user's input or the run's numerics: one sentence, exit 2
USER_ERRORS = (ConfigError, DataError, CheckpointError, OutputError, NonFiniteError, ValueError,
               FileNotFoundError, PermissionError)
