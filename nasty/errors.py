"""Errors that the CLI prints as one line (no traceback)."""


class NastyError(Exception):
    """Base class: a problem the user can fix; ``str(e)`` says what and how."""


class DataError(NastyError):
    """A dataset is unknown, missing or malformed, or a data option is out of range."""


class CheckpointError(NastyError):
    """Weights or a run directory cannot be loaded or written safely."""


class ModelError(NastyError):
    """An unknown architecture, or weights that do not fit one."""


class TrainingStopped(NastyError):
    """Training diverged (NaN/inf) or collapsed; the last good checkpoint is kept."""
