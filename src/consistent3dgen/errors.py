"""Errors a user sees as one line (the CLI prints them without a traceback).

Raise :class:`InputError` at the boundary only — reading inputs, options and weights — where the message can
name what the user gave. Internal invariants (a wrong tensor shape between two of our own functions) are
ordinary ``ValueError``/``RuntimeError``: they are bugs, and eval must not count them as failed runs.
"""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with its whitespace runs (newlines included) made single spaces, cut to ``limit`` characters:
    a library's multi-line message fit for the one-line contract."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class UserError(Exception):
    """Base of the errors the CLI prints as one line."""


class InputError(UserError, ValueError):
    """Bad user input: unreadable file, wrong shape, NaN points, empty mask, an option out of range..."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Model weights missing; the message names the local path or hub id that was tried."""


class NoSurfaceError(UserError, RuntimeError):
    """The generated field holds no surface (nothing to extract): a failed run, not bad input."""
