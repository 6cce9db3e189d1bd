"""Errors the suite reports to the user as one line (the CLI prints them and exits 2)."""


class BenchError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


class ConfigError(BenchError):
    """An unknown, mistyped or out-of-range setting, preset or algorithm."""


class DataError(BenchError):
    """A data set that is missing, corrupt or cannot be fetched."""
