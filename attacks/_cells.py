"""The audit's files in ``out/cells/``: a finished cell (``<attack>-seed<n>.json``), the state of one
in training (``.partial.pt``), a data-free cell's images (``.images.safetensors``); read (a
foreign or malformed one refused), written atomically, and found in another audit's folder
(``reference_from``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nasty import checkpoint as ckpt
from nasty.errors import NastyError, one_line
from nasty.safety import read_json
from nasty.schema import AuditCell, PartialCell, validate

from . import ATTACKS
from .scale import first_difference
from .summary import BASELINES, REFERENCE, SOURCES, TEACHER


def _cells_dir(out: Path) -> Path:
    """``out/cells``, made, with the temporary files of a killed write removed."""
    cells_dir = out / "cells"
    if cells_dir.is_symlink():  # a published audit folder must not send our writes elsewhere
        raise NastyError(f"`out` {one_line(out)}: cells is a link ({one_line(os.readlink(cells_dir))}); refused")
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
        for folder in (out, cells_dir):
            ckpt.remove_stale_temps(folder)
    except OSError as e:
        raise NastyError(f"`out` {out} is not writable: {e.strerror or e}") from None
    return cells_dir


def _reference_cells(folder) -> Path | None:
    """``folder/cells`` of an earlier audit, or ``None`` for none; a folder without one fails, named."""
    if folder is None:
        return None
    cells = Path(folder).expanduser() / "cells"
    if not cells.is_dir():
        raise NastyError(f"`reference_from` {one_line(folder)}: not an audit folder (it has no cells/)")
    return cells


def _reference_cell(path: Path, key: dict, *, students: list[str]) -> tuple[Path, dict] | None:
    """Another audit's finished cell at ``path`` whose reference side this cell can take: the same
    settings, seed and reference (known by its sha256); any audited teacher. ``None`` otherwise."""
    if key["teachers"].get(REFERENCE) is None or not path.is_file():
        return None
    try:
        cell = _read_cell(path)
    except NastyError:
        return None
    saved = cell["key"]
    theirs = saved.get("teachers") if isinstance(saved, dict) else None
    served = saved.get("served") if isinstance(saved, dict) else None
    if not isinstance(theirs, dict) or not isinstance(served, dict) or saved != {
            **key, "teachers": {**key["teachers"], TEACHER: theirs.get(TEACHER)},
            "served": {**key["served"], TEACHER: served.get(TEACHER)}}:
        return None
    runs = [r for r in cell["runs"] if r["source"] == REFERENCE]
    if sorted(r["student"] for r in runs) != sorted(students) or any(
            (r["attack"], r["seed"]) != (key["attack"], key["seed"]) for r in runs):
        return None
    return path, cell


IMAGES_PER_CLASS = 4  # what a data-free cell keeps of its synthesised images (report.html shows 2 a class)


def _images_path(cell: Path) -> Path:
    return cell.with_name(cell.name.replace(".json", ".images.safetensors"))


def _save_images(path: Path, made: dict) -> None:
    """``source -> (images, labels)`` as one safetensors file (images in fp16: they are only shown)."""
    from safetensors.torch import save

    tensors = {}
    for src, (x, y) in made.items():
        tensors[f"{src}.images"] = x.half().contiguous()
        tensors[f"{src}.labels"] = y.contiguous()
    data = save(tensors)  # encoded here, written into atomic_write's own temporary file (save_file would replace it)
    ckpt.atomic_write(path, lambda p: Path(p).write_bytes(data))


def _load_images(path: Path) -> dict:
    """What :func:`_save_images` wrote; empty for a cell without images (not data-free, or made by an
    older version) or an unreadable file (the report then shows no grid for it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        t = load_file(str(path)) if path.exists() else {}
    except (OSError, SafetensorError):
        return {}
    return {src: (t[f"{src}.images"].float(), t[f"{src}.labels"]) for src in SOURCES
            if f"{src}.images" in t and f"{src}.labels" in t}


def _load_cell(path: Path, key: dict, *, force: bool):
    """A finished cell with this audit's key; one that does not fit the schema is refused
    (or, with ``force``, done again)."""
    if not os.path.lexists(path):
        return None
    try:
        cell = _read_cell(path)
    except NastyError as e:
        if force:
            return None
        raise NastyError(f"{e}; remove it, or pass `force` to redo the cell") from None
    return cell if _same_key(cell["key"], key, path, force=force) else None


def _read_cell(path: Path) -> dict:
    """A finished cell as the schema allows it, its settings under their current names."""
    cell = validate(AuditCell, read_json(path), path)
    _rename_settings(cell["key"])
    return cell


def _rename_settings(key: dict | None) -> None:
    """An older cell's key, in place, with the attack's settings under their current names, a
    setting added since at the value the cell ran with (``Attack.added``), without the teachers
    for a baseline cell (older audits recorded them there too), and with bare teachers where it
    does not say what they were served through (audits before ``served`` did not; their cells are
    taken as cells of bare teachers, which most were: one of a defended teacher is then refused
    for it, and redone with ``force``)."""
    if isinstance(key, dict) and key.get("attack") in BASELINES:
        key.pop("teachers", None)
    elif isinstance(key, dict) and isinstance(key.get("teachers"), dict):
        key.setdefault("served", dict.fromkeys(SOURCES))
    attack = ATTACKS.get((key or {}).get("attack"))
    settings = (key or {}).get("settings")
    if attack is not None and isinstance(settings, dict):
        for old, new in getattr(attack, "renamed", {}).items():
            if old in settings and new not in settings:
                settings[new] = settings.pop(old)
        for name, before in getattr(attack, "added", {}).items():  # what a cell from before the setting ran with
            settings.setdefault(name, before)


def _load_partial(path: Path, key: dict, *, force: bool):
    """The saved state of an unfinished cell with the same settings, or ``None``. One of another
    audit (or one that cannot be read) is refused, or with ``force`` dropped: ``force`` redoes
    what has other settings, and still goes on with a cell in training that has these."""
    try:
        state = ckpt.load_resume_file(path)
        if state is not None:
            validate(PartialCell, state, path)
            _rename_settings(state["key"])
        if state is None or _same_key(state["key"], key, path, force=force):
            return state
    except NastyError:
        if not force:
            raise
    path.unlink(missing_ok=True)
    return None


def _partial_saver(cells: dict, *, t0: float, every: float):
    """``run_cells``' ``save``: when ``every`` seconds have passed since the last write, write each
    seed's state to its cell's partial file (``cells``: seed -> ``(path, key)``), with its share of
    the seconds spent."""
    last = [time.perf_counter()]

    def save(states: dict) -> None:
        now = time.perf_counter()
        if now - last[0] >= every:
            for seed, state in states.items():
                path, key = cells[seed]
                ckpt.save_resume_file(path, {"key": key, "seconds": (now - t0) / len(states), **state})
            last[0] = time.perf_counter()

    return save


def _same_key(saved: dict | None, key: dict, path: Path, *, force: bool) -> bool:
    """True if a cell's saved key is this audit's; refuse another audit's results unless ``force``."""
    if saved == key:
        return True
    if force:
        return False
    name, saved, now = first_difference(saved or {}, key)  # e.g. settings.pool_size
    raise NastyError(f"`out` {one_line(path.parent.parent)} holds results of another audit ({one_line(name)[:80]} "
                     f"differs: {one_line(repr(saved))[:80]} there, {now!r} now); use another `out` or `force` to redo them")
