"""Errors the suite reports to the user as one line (the CLI prints them and exits with
`exit_code`: 2 for bad input, 3 for a run that diverged)."""


class BenchError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""

    exit_code = 2


class ConfigError(BenchError):
    """An unknown, mistyped or out-of-range setting, preset or algorithm."""


class DataError(BenchError):
    """A data set that is missing, corrupt or cannot be fetched."""


class TrainingDiverged(BenchError):
    """The meta-training loss or the weights stopped being finite."""

    exit_code = 3
