"""How the command line says what went wrong: our errors and warnings as one line each, naming the
command's flags (:func:`fail_cleanly`), a path the OS refuses, and a Ctrl-C (what the interrupted
command kept, and how it goes on)."""

from __future__ import annotations

import functools
import re
import sys
import warnings

import click

from nasty.errors import NastyError, NastyWarning, one_line


def os_error_line(e: OSError) -> str:
    """``PATH: why`` (the OS's words) on one line."""
    where = " -> ".join(one_line(f)[:200] for f in (e.filename, e.filename2) if f is not None)
    why = e.strerror or str(e) or type(e).__name__
    return one_line(f"{where}: {why}" if where else why)


# what a command interrupted has kept, and how it goes on: the commands that resume do it their own way
RESUMES = {
    "--resume": "the last finished epoch is saved: run the same command with --resume",
    "audit": "the finished cells (and the last saved state of the one in training) are kept in --out: run the "
             "same command again to go on from them",
    "compare": "the finished cells of each audit are kept in --out: run the same command again to go on from them",
    "demo": "what is finished is kept in --out: run the same command again to go on from it",
}


def on_interrupt() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return "run the same command again"
    if any(p.name == "resume" for p in ctx.command.params):
        return RESUMES["--resume"]
    return RESUMES.get(ctx.command.name, "nothing was left half-written: run the same command again")


def fail_cleanly(fn):
    """Our errors, and paths the OS refuses, print as one line (exit 1); Ctrl-C says how this
    command goes on (exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():  # our warnings: one line on stderr each
                warnings.simplefilter("always", NastyWarning)
                warnings.showwarning = show_warning
                return fn(*args, **kwargs)
        except NastyError as e:  # text from files may hold newlines or escape sequences: one line, escaped
            raise click.ClickException(one_line(as_flags(str(e)))) from None
        except OSError as e:  # a name too long, a folder not writable, a full disk: wherever it is met
            raise click.ClickException(os_error_line(e)) from None
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted; {on_interrupt()}", err=True)
            sys.exit(130)

    return wrapper


_NAMED = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(text: str) -> str:
    """A library message for the command line: each option it names as a Python keyword
    (`` `data_root` ``) becomes the running command's flag (``--data-root``); names that are not
    this command's options stay as they are."""
    flags, ctx = {}, click.get_current_context(silent=True)
    while ctx is not None:  # the command's own options first, then its group's
        for param in ctx.command.params:
            if isinstance(param, click.Option):
                flags.setdefault(param.name, max(param.opts, key=len))
        ctx = ctx.parent
    # a library keyword for one of a list this command takes (compare's `teacher` is one of --teachers)
    return _NAMED.sub(lambda m: flags.get(m.group(1), flags.get(m.group(1) + "s", m.group(0))), text)


def show_warning(message, category, *args, **kwargs):
    if issubclass(category, NastyWarning):
        click.echo(f"warning: {as_flags(str(message))}", err=True)
    else:
        _default_showwarning(message, category, *args, **kwargs)


_default_showwarning = warnings.showwarning
