"""The one exception type of coin/: bad input is a ``ValueError`` with a one-line message."""


class CodingError(ValueError):
    """Invalid input to a coding method (architectures, coding weights, sample count, method name)."""
