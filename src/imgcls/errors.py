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


class TrainingInterrupted(UserError):
    """SIGTERM/SIGINT: training stopped after finishing its step and saving a checkpoint to resume from.
    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
