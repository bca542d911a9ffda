"""User-facing errors: one line, naming the problem. The CLI prints them without a traceback."""


class InputError(ValueError):
    """Bad user input: unreadable file, wrong shape, NaN points, empty mask..."""


class WeightsNotFoundError(FileNotFoundError):
    """Model weights missing; the message names the local path or hub id that was tried."""
