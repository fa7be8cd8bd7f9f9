"""The one exception type of dfkd: a user mistake, reported as one line (the bottom layer: imports nothing)."""


class DfkdError(Exception):
    """A user mistake (bad recipe, key, value, file): reported as one line and a non-zero exit."""
