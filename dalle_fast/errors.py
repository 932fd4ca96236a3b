"""The error a training run reports to the user as a one-line message, without a traceback."""


class UsageError(ValueError):
    """A problem with the command line or the run directory the user can fix (the message says how)."""
