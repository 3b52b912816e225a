"""User-facing error types.

A `UserError` is a mistake the user can fix (bad config, missing data, unreadable
checkpoint). The CLI prints its one-line message and exits with code 2, without a
traceback; programming errors still raise normally.
"""


class UserError(Exception):
    """An error caused by user input; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """Invalid configuration key or value."""


class DataError(UserError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(UserError):
    """A checkpoint or run directory that cannot be read."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN)."""
