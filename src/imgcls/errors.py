"""User-facing error types.

A `UserError` is a mistake the user can fix (bad config, missing data, unreadable
checkpoint). The CLI prints its one-line message and exits with code 2, without a
traceback; programming errors still raise normally. :func:`describe_validation_error` turns a
pydantic validation error into that one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable


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


def describe_validation_error(
    errors: list[dict],
    prefix: tuple[str, ...] | list[str] = (),
    valid_keys: Callable[[list[str]], list[str]] | None = None,
    keys_label: str = "Valid keys here",
    list_empty: bool = False,
) -> str:
    """One line for the first of pydantic's ``ValidationError.errors()``, shared by the config and the typed
    component arguments so that both read alike.

    ``prefix`` is prepended to every location (``model.head_args``); ``valid_keys(section)`` lists the valid
    keys of a section (location without the bad key) for an unknown key: the closest one is suggested, and
    they are listed after ``keys_label`` (an empty list only with ``list_empty``).
    """
    err = errors[0]
    loc = [*prefix, *(str(p) for p in err["loc"])]
    key = ".".join(loc) or "config"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        valid = valid_keys(loc[len(prefix) : -1]) if valid_keys is not None else []
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        allowed = f" {keys_label}: {', '.join(valid) or 'none'}." if valid or list_empty else ""
        return f"unknown config key '{key}'{hint or ('.' if allowed else '')}{allowed}"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = "must be " + msg.removeprefix("Input should be ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if len(loc) == len(prefix):
        return f"invalid {key if prefix else 'config'}: {msg}{more}"
    return f"invalid value {shown} for '{key}': {msg}{more}"


class TrainingInterrupted(UserError):
    """SIGTERM/SIGINT: training stopped after finishing its step and saving a checkpoint to resume from.
    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
