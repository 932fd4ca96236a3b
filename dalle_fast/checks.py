"""Argument checks shared by the public functions of ``dalle_fast``: one place for the rule and the
message, so every bad value is reported the same way, naming the argument."""
from __future__ import annotations


class IntArgumentError(TypeError, ValueError):
    """A value that is not an int in the allowed range: both a ``ValueError`` (a bad value) and a
    ``TypeError`` (a non-int), so callers may catch either."""


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]`` (``None``: unbounded on that side),
    else :class:`IntArgumentError` with the message ``"{name}: must be an int ..., got {value!r}"``."""
    if isinstance(value, bool) or not isinstance(value, int) \
            or (low is not None and value < low) or (high is not None and value > high):
        raise IntArgumentError(f"{name}: must be an int{_bounds(low, high)}, got {value!r}")
    return value


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return "" if high is None else f" <= {high}"
