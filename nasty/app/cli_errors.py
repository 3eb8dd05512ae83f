"""How the command line says what went wrong outside our own errors: a path the OS refuses, and a
Ctrl-C (what the interrupted command kept, and how it goes on)."""

from __future__ import annotations

import click

from nasty.errors import one_line


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
