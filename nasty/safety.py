"""Reading files that other people made, and writing next to them, safely. One place for:

- limits (sizes, classes, pixels) that a user can raise with ``NASTY_MAX_*`` environment variables;
- reading: only regular files (a FIFO, a device such as ``/dev/zero`` or a directory is refused
  before anything is read), never more than the limit; JSON nesting bounded;
- writing: temporaries made by :func:`tempfile.mkstemp` (random name, ``O_EXCL|O_NOFOLLOW``) in
  the target folder, never a name found on disk;
- text from files shown to people: one line with control characters escaped
  (:func:`one_line`), markdown (:func:`md_text`), matplotlib (:func:`plot_text`); HTML is
  escaped by the report templates' environment (:mod:`attacks.render`).

The schemas of the files themselves are in :mod:`nasty.schema`.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import CheckpointError, NastyError, one_line

# name -> (default, what it bounds); NASTY_MAX_<NAME> overrides (an integer, or with a K/M/G suffix)
LIMITS = {
    "JSON_BYTES": (64 << 20, "a card, metrics, audit cell or sweep file"),
    "WEIGHTS_BYTES": (16 << 30, "a weights or resume file (and what a .pt archive declares)"),
    "CLASSES": (100_000, "the number of classes a card may declare"),
    "IMAGE_PIXELS": (4096 * 4096, "the pixels of one image in an image folder"),
    "DATA_BYTES": (16 << 30, "a decoded dataset in memory"),
    "SEEDS": (1_000, "the seeds of an audit"),
    "STUDENTS": (64, "the student architectures of an audit"),
    "EPOCHS": (100_000, "the epochs of a run or of an audit's students"),
}
MAX_JSON_DEPTH = 32


def limit(name: str) -> int:
    default, _ = LIMITS[name]
    raw = os.environ.get(f"NASTY_MAX_{name}")
    if raw is None:
        return default
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw.strip()[-1:].upper(), 1)
    try:
        value = int(raw.strip()[:-1] if scale > 1 else raw.strip()) * scale
    except ValueError:
        value = -1
    if value <= 0:
        raise NastyError(f"NASTY_MAX_{name}={one_line(raw)!s} is not a positive integer (e.g. 8G)")
    return value


def over_limit(what: str, size: int, name: str, unit: str = "bytes") -> str:
    return (f"{what} is {size:,} {unit}, more than the limit of {limit(name):,} "
            f"(set NASTY_MAX_{name} to raise it)")


# --------------------------------------------------------------------------- text


_MD_SPECIAL = set("\\`*_{}[]()<>#|!~$&")


def md_text(value) -> str:
    """Any value from a file, safe in a markdown table cell (``|`` and markup escaped)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in one_line(value))


def plot_text(value) -> str:
    """Any value from a file, safe as matplotlib text (``$`` would start mathtext)."""
    return one_line(value).replace("$", r"\$")


# --------------------------------------------------------------------------- reading


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(st: os.stat_result, path, *, limit_name: str, error=CheckpointError) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{one_line(path)} is {_kind(st.st_mode)}, not a regular file; refused")
    if st.st_size > limit(limit_name):
        raise error(over_limit(one_line(path), st.st_size, limit_name))


def open_regular(path, *, limit_name: str = "JSON_BYTES", error=CheckpointError):
    """Open ``path`` for reading, binary, if it is a regular file within the limit (a FIFO is
    opened without blocking and refused, a device or directory refused, all before any read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{one_line(path)}: no such file or directory") from None
    except OSError as e:
        raise error(f"cannot read {one_line(path)}: {e.strerror or e}") from None
    try:
        check_regular(os.fstat(fd), path, limit_name=limit_name, error=error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, *, limit_name: str = "JSON_BYTES", error=CheckpointError) -> bytes:
    with open_regular(path, limit_name=limit_name, error=error) as f:
        try:
            data = f.read(limit(limit_name) + 1)
        except OSError as e:
            raise error(f"cannot read {one_line(path)}: {e.strerror or e}") from None
    if len(data) > limit(limit_name):  # it grew while we read
        raise error(over_limit(one_line(path), len(data), limit_name))
    return data


def read_text(path, *, limit_name: str = "JSON_BYTES", error=CheckpointError) -> str:
    try:
        return read_bytes(path, limit_name=limit_name, error=error).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{one_line(path)} is not UTF-8 text (byte {e.start})") from None


def _too_deep(obj) -> bool:
    level = [obj]
    for _ in range(MAX_JSON_DEPTH):
        level = [v for o in level if isinstance(o, (dict, list)) for v in (o.values() if isinstance(o, dict) else o)]
        if not level:
            return False
    return True


def parse_json(text: str, where, *, error=CheckpointError):
    """``json.loads`` with nesting bounded; any problem is one line naming ``where``."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise error(f"{one_line(where)}: JSON nested too deeply") from None
    except ValueError as e:
        raise error(f"{one_line(where)} is not valid JSON ({one_line(e)})") from None
    if _too_deep(obj):
        raise error(f"{one_line(where)}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return obj


def read_json(path, *, error=CheckpointError):
    return parse_json(read_text(path, error=error), path, error=error)


# --------------------------------------------------------------------------- writing


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file in ``path``'s folder: random name, created with
    ``O_EXCL|O_NOFOLLOW`` (so never a file or link that was there). Named
    ``.NAME.tmp<pid>-<host>.<random>`` so that :func:`stale_temps` can tell whose it is."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp{os.getpid()}-{host_tag()}.", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # the permissions open() would give, not mkstemp's 0600
    return fd, Path(name)


OTHER_HOST_TEMP_SECONDS = 3600.0  # a temporary of another machine (a shared folder) is dead once this old


def host_tag() -> str:
    """8 hex digits of this machine's name (a process id means something on its own machine only)."""
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def stale_temps(folder) -> list[Path]:
    """Temporaries of :func:`temp_beside` in ``folder`` whose writer is no longer running: on this
    machine, its process is gone; on another one sharing the folder, it is an hour old."""
    import time

    out, here = [], host_tag()
    for tmp in Path(folder).glob(".*.tmp*"):
        pid, _, host = tmp.name.rpartition(".tmp")[2].partition(".")[0].partition("-")
        if not pid.isdigit():
            continue
        if host and host != here:
            try:
                if time.time() - os.lstat(tmp).st_mtime > OTHER_HOST_TEMP_SECONDS:
                    out.append(tmp)
            except FileNotFoundError:
                pass
        elif not alive(int(pid)):
            out.append(tmp)
    return out


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one we may not signal counts as running; a
    zombie, ended but not yet reaped by its parent, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:  # Linux: the state field follows the command name in parentheses
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
