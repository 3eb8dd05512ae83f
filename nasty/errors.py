"""Errors that the CLI prints as one line (no traceback).

A message names an option the user can change by its Python keyword in backquotes
(`` `data_root` ``, as :func:`nasty.runs.train` and the other entry points spell it); the CLI
shows the same name as its flag (``--data-root``), so the library never speaks in flags.
"""


def one_line(text) -> str:
    """``text`` on one line: newlines, escape sequences and other control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters, control characters
    escaped), or its type's name."""
    text = str(e).strip().splitlines()
    return one_line(text[0][:200]) if text else type(e).__name__


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


class Diverged(TrainingStopped):
    """A student's loss became NaN/inf (:func:`attacks.base.run_cells`): one thief that failed, which
    an audit records as such and goes on."""


class NastyWarning(UserWarning):
    """Something worth a line on stderr that does not stop the command (the CLI prints ``warning: ...``)."""


class BudgetNotMet(NastyError):
    """Even the weakest hardening tried costs more than the budget; ``card`` is the run kept (the cheapest)."""

    def __init__(self, card: dict, message: str):
        super().__init__(message)
        self.card = card
