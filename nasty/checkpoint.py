"""Checkpoints: ``DIR/model.safetensors`` + ``DIR/card.json`` (+ ``DIR/train_state.pt`` to resume).

Writing: every file goes to a temporary name in the same folder, is flushed to disk and
renamed over the old one, so a reader never sees half a file. The card is written last and
holds the sha256 of the weights, so a card always describes weights that exist in full.

Loading other people's weights (``load_model``), safest first:
  1. a run directory or ``.safetensors`` file (no code can run while loading);
  2. a ``.pt``/``.pth``/``.bin`` state dict through ``torch.load(weights_only=True)``;
  3. full unpickling only with ``unsafe_pickle=True`` (``--unsafe-pickle``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ModelError, first_line
from .safety import check_regular, one_line, open_regular, read_json, stale_temps, temp_beside
from .schema import Card, TrainState, validate

WEIGHTS, CARD, STATE, METRICS = "model.safetensors", "card.json", "train_state.pt", "metrics.jsonl"
PICKLE_EXTS = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

__all__ = ["atomic_write", "remove_stale_temps", "save_release", "save_state", "load_state",
           "save_resume_file", "load_resume_file", "read_card", "load_weights",
           "load_model", "build_model", "sha256_file", "require_run", "WEIGHTS", "CARD", "STATE", "METRICS"]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``. Errors become one line.

    ``tmp_path`` is a new file with a random name in the same folder (:func:`nasty.safety.temp_beside`);
    if it is not the same file when ``write`` returns (swapped for a link), nothing is renamed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path)
        try:
            made = os.fstat(fd)
            write(tmp)
            now = os.lstat(tmp)
            if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
                raise OSError(f"the temporary file {tmp.name} was replaced while it was written")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CheckpointError(f"cannot write {one_line(path)}: {one_line(e.strerror or e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def remove_stale_temps(folder) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder`` (never trusted, never read)."""
    removed = []
    for tmp in stale_temps(folder):
        if stat.S_ISDIR(os.lstat(tmp).st_mode):
            continue
        tmp.unlink(missing_ok=True)  # a link is removed, never followed
        removed.append(tmp.name)
    return removed


def write_json(path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open_regular(path, limit_name="WEIGHTS_BYTES") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_release(out, model: nn.Module, card: dict) -> dict:
    """Write weights then card (with the weights' sha256); return the card written. A card that its
    own schema would refuse is refused before anything is written (every command must read it)."""
    from safetensors.torch import save

    validate(Card, card, f"the card for {one_line(out)}", error=CheckpointError)
    out = Path(out)
    sd = plain_state_dict(model)
    meta = {"format": "nasty", "arch": str(card.get("arch", "")), "num_classes": str(card.get("num_classes", "")),
            "input_shape": json.dumps(card.get("input_shape"))}
    # bytes written into our temporary file (save_file would make a file of its own at that name)
    atomic_write(out / WEIGHTS, lambda p: Path(p).write_bytes(save(sd, metadata=meta)))
    card = {**card, "sha256": sha256_file(out / WEIGHTS)}
    write_json(out / CARD, card)
    return card


def save_state(out, state: dict) -> None:
    """The resume state: model, optimizer and scheduler state, epoch, run config."""
    save_resume_file(Path(out) / STATE, state)


def load_state(out) -> dict | None:
    """The resume state in ``out`` (structure checked), or ``None`` if there is none."""
    path = Path(out) / STATE
    state = load_resume_file(path)
    return None if state is None else validate(TrainState, state, path)


def save_resume_file(path, state: dict) -> None:
    """Write our own resume state (tensors, state dicts, plain values) atomically."""
    atomic_write(path, lambda p: torch.save(state, p))


def load_resume_file(path) -> dict | None:
    """Read a file of :func:`save_resume_file` with ``weights_only=True``; ``None`` if there is none."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    try:
        check_regular(os.stat(path), path, limit_name="WEIGHTS_BYTES")
        check_pt_archive(path)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {one_line(path)}: {e}; remove it or use another output folder") from None
    except Exception as e:  # noqa: BLE001 - anything unreadable is reported the same way
        reason = _weights_only_reason(e) if isinstance(e, pickle.UnpicklingError) else first_line(e)
        raise CheckpointError(f"cannot read {one_line(path)} to resume ({one_line(reason)}); "
                              f"remove it or use another output folder") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{one_line(path)}: expected a mapping, found {type(obj).__name__}")
    return obj


def check_pt_archive(path) -> None:
    """Before ``torch.load``: the zip archive's declared sizes (its central directory, nothing
    decompressed) must fit the weights limit, and no more than the file holds (torch never
    compresses, so a small file declaring a large tensor is forged). The legacy (non-zip)
    format declares its tensor sizes inside the pickle, unchecked: refused."""
    from .safety import limit, over_limit

    path = Path(path)
    if not zipfile.is_zipfile(path):
        _refuse_legacy(path)
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{one_line(path)} could not be read as a PyTorch file ({first_line(e)})") from None
    if declared > limit("WEIGHTS_BYTES"):
        raise CheckpointError(over_limit(f"{one_line(path)} declares tensors that", declared, "WEIGHTS_BYTES"))
    size = os.stat(path).st_size
    if declared > 2 * size + (1 << 20):
        raise CheckpointError(f"{one_line(path)} declares {declared:,} bytes of content in a {size:,}-byte file "
                              f"(compressed entries: not written by torch.save); refused")


def _refuse_legacy(path: Path) -> None:
    """A non-zip file: its first pickle read by torch's safe unpickler (which names a forbidden
    global, raising ``pickle.UnpicklingError``); if that passes, refused all the same."""
    from torch import _weights_only_unpickler

    with open_regular(path, limit_name="WEIGHTS_BYTES") as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            _weights_only_unpickler.load(f)
        except pickle.UnpicklingError:
            raise
        except Exception as e:  # noqa: BLE001 - garbage
            raise CheckpointError(f"{one_line(path)} could not be read as a PyTorch file ({first_line(e)})") from None
    raise CheckpointError(f"{one_line(path)} is in the legacy (non-zip) torch.save format, whose tensor sizes cannot "
                          f"be checked before loading; re-save it with a current torch.save or convert it to "
                          f"safetensors, or pass `unsafe_pickle` if you trust its source")


def read_card(path) -> dict:
    """A run's ``card.json`` (or the file itself), checked against :class:`nasty.schema.Card`."""
    path = Path(path)
    path = path / CARD if path.is_dir() else path
    if not os.path.lexists(path):
        raise CheckpointError(f"no {CARD} in {one_line(path.parent)}; is it a run directory of `nasty train`/`harden`?")
    return validate(Card, read_json(path), path)


def require_run(path, *, command: str, option: str = "`teacher`") -> Path:
    """``path`` as a run directory (``model.safetensors`` + ``card.json``), for a command that
    takes nothing else; weights alone fail in one line that says how to make them one."""
    run = Path(path).expanduser()
    if not (run.is_dir() and (run / CARD).is_file() and (run / WEIGHTS).is_file()):
        raise CheckpointError(f"{option} {one_line(path)}: {command} takes a run directory ({WEIGHTS} + {CARD}); "
                              f"make one from the weights with `nasty import`")
    return run


# --------------------------------------------------------------------------- loading


def load_weights(path, *, unsafe_pickle: bool = False, option: str = "`teacher`") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a state dict from a run dir, ``.safetensors`` or a pickle-based file, safely.

    Returns ``(state_dict, card)``; ``card`` is what is known about the weights (the run's
    card.json, a card.json beside the file, or the safetensors metadata), possibly empty.
    """
    path = Path(path).expanduser()
    try:
        st = os.stat(path)
    except OSError as e:
        what = "no such file or directory" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        raise CheckpointError(f"{option} {one_line(path)}: {one_line(what)}") from None
    card: dict = {}
    if stat.S_ISDIR(st.st_mode):
        card = read_card(path)
        if not os.path.lexists(path / WEIGHTS):
            raise CheckpointError(f"{one_line(path)} has {CARD} but no {WEIGHTS}; the run did not finish an epoch")
        path = path / WEIGHTS
        st = os.stat(path)
    elif path.name == WEIGHTS and os.path.lexists(path.parent / CARD):
        card = read_card(path.parent)
    check_regular(st, path, limit_name="WEIGHTS_BYTES")  # before a byte is read: no FIFO, no /dev/zero
    file_sha = sha256_file(path)
    if card.get("sha256") and file_sha != card["sha256"]:
        raise CheckpointError(f"{one_line(path)} does not match the sha256 in {one_line(path.parent / CARD)} (an "
                              f"interrupted write or a modified file); resume the run that wrote it to rewrite it, or restore the file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise CheckpointError(f"{one_line(path)} is not a valid safetensors file ({first_line(e)})") from None
        if not card and meta.get("format") == "nasty":
            card = _card_from_metadata(meta, path)
        return sd, {**card, "sha256": file_sha}

    if path.suffix.lower() not in PICKLE_EXTS:
        raise CheckpointError(f"{one_line(path)}: expected a run directory, a .safetensors file or a "
                              f"{'/'.join(PICKLE_EXTS)} state dict")
    try:
        if not unsafe_pickle:
            check_pt_archive(path)
        with warnings.catch_warnings():  # torch warns about pickle protocols, sparse or meta tensors: we judge them
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not unsafe_pickle:
            raise CheckpointError(
                f"{one_line(path)} refused: it holds Python objects beyond tensors, and unpickling them could run "
                f"arbitrary code; convert it to safetensors, or pass `unsafe_pickle` if you trust its source "
                f"(torch.load(weights_only=True): {_weights_only_reason(e)})") from None
        obj = _unsafe_load(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip, garbage, ...
        raise CheckpointError(f"{one_line(path)} could not be read as a PyTorch file ({first_line(e)})") from None
    return _find_state_dict(obj, path), {**card, "sha256": file_sha}


def _card_from_metadata(meta: dict, path) -> dict:
    """What a nasty ``.safetensors`` file's metadata (strings) says, as a checked card."""
    where = f"{path} (metadata)"
    card: dict = {"arch": meta.get("arch") or None}
    num = meta.get("num_classes")
    if num:
        if not (num.isascii() and num.isdigit() and len(num) <= 12):
            raise CheckpointError(f"{one_line(where)}: field num_classes: not an integer (got {one_line(num)[:40]!r})")
        card["num_classes"] = int(num)
    shape = meta.get("input_shape")
    if shape:
        from .safety import parse_json

        card["input_shape"] = parse_json(shape, f"{where} input_shape")
    return validate(Card, card, where, strict=False)


def _weights_only_reason(e: Exception) -> str:
    """What torch's safe unpickler objected to (e.g. 'Trying to load unsupported GLOBAL posix.system'),
    without its boilerplate and its advice to retry with weights_only=False."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text)
    if m:
        reason = m.group(1)
    else:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        rest = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
        reason = rest[0] if rest else first_line(e)
    reason = re.split(r"\s*(?:Please use|In PyTorch 2\.6|Re-running|weights_only=False|\(1\))", reason)[0]
    return one_line(" ".join(reason.split())[:200])


def _unsafe_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} could not be unpickled ({first_line(e)})") from None


def _find_state_dict(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "module"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if tensors and len(tensors) == len(obj):
            return plain_entries(tensors, path)
        bad = next((k for k, v in obj.items() if not torch.is_tensor(v)), None)
        if bad is not None:
            raise CheckpointError(f"{one_line(path)} does not hold a state dict (a mapping of names to tensors): "
                                  f"entry {one_line(repr(bad))[:60]} is {_what(obj[bad])}")
    raise CheckpointError(f"{one_line(path)} does not hold a state dict (a mapping of names to tensors)")


def _what(v) -> str:
    return f"a {type(v).__name__}" if not isinstance(v, (dict, list, tuple)) else \
        f"a {type(v).__name__} of {len(v)} (nested)"


def plain_entries(sd: dict, path) -> dict[str, torch.Tensor]:
    """``sd`` if every entry is a name (a string) and a plain dense tensor on the CPU; else one line
    naming ``path`` and the first entry that is not (a sparse, quantized, nested or meta tensor, a
    key that is not a string), before anything reads the values."""
    for k, v in sd.items():
        why = None
        if not isinstance(k, str) or not k:
            why = f"has a key of type {type(k).__name__}, not a name (a non-empty string)"
        elif not torch.is_tensor(v):
            why = f"is {_what(v)}, not a tensor"
        elif v.layout != torch.strided or v.is_quantized or getattr(v, "is_nested", False):
            why = f"is a {str(v.layout).removeprefix('torch.')}{' quantized' if v.is_quantized else ''} tensor, not a dense one"
        elif v.device.type != "cpu":
            why = f"is a tensor on the {v.device.type} device, which holds no values"
        if why is not None:
            raise CheckpointError(f"{one_line(path)}: entry {one_line(repr(k))[:60]} {why}; a weights file holds a "
                                  f"plain state dict (names to dense tensors)")
    return sd


def _strip_prefixes(sd: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def fit_state_dict(model: nn.Module, sd: dict, *, arch: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line account of what does not fit."""
    sd = _fitted(model, sd, arch=arch)
    own = model.state_dict()
    for k, v in sd.items():  # the dtypes a model is trained in, and finite numbers
        floating = own[k].is_floating_point()
        if (v.dtype not in _WEIGHT_DTYPES) if floating else (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
            raise ModelError(f"weights for {arch}: {one_line(k)[:80]} is {str(v.dtype).removeprefix('torch.')}, "
                             f"expected {'float32, float16 or bfloat16' if floating else 'an integer type'}")
        if floating and not bool(torch.isfinite(v).all()):
            raise ModelError(f"weights for {arch}: {one_line(k)[:80]} holds NaN or infinite values")
    model.load_state_dict(sd)


def _fitted(model: nn.Module, sd: dict, *, arch: str) -> dict:
    """``sd`` with its names as ``model`` has them, if every tensor has a place of its shape (works
    on a model built on the ``meta`` device: the check needs no memory)."""
    sd = _strip_prefixes(sd)
    if hasattr(model, "remap_state_dict"):
        sd = model.remap_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def some(xs):
            return one_line(", ".join(x[:80] for x in xs[:3])) + (f", +{len(xs) - 3} more" if len(xs) > 3 else "")

        parts = [f"{len(missing)} missing ({some(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({some(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({some(shapes)})" if shapes else ""]
        raise ModelError(f"weights do not fit the architecture {one_line(arch)}: " + "; ".join(p for p in parts if p))
    return sd


_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_model(source, *, arch: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
               unsafe_pickle: bool = False, device="cpu", option: str = "`teacher`") -> tuple[nn.Module, dict]:
    """Build the architecture and load weights into it; returns ``(model.eval(), card)``.

    ``arch``/``num_classes``/``in_chans`` default to what the card or file metadata says;
    given explicitly, they must agree with it.
    """
    sd, card = load_weights(source, unsafe_pickle=unsafe_pickle, option=option)
    model = build_model(sd, card, source=source, arch=arch, num_classes=num_classes, in_chans=in_chans, served=True)
    return model.to(device).eval(), card


def build_model(sd: dict, card: dict, *, source, arch=None, num_classes=None, in_chans=None,
                served: bool = False) -> nn.Module:
    """The architecture named by ``arch`` or ``card``, with the state dict ``sd`` loaded.

    ``served``: wrapped in the card's output transform (:mod:`nasty.defences`), i.e. what the
    released model answers (``load_model``, the audit, export); without it the bare network
    (the adversary that ``harden`` trains against).
    """
    from .defences import Defended, create_transform

    transform = create_transform(card.get("output_transform")) if served else None
    arch = arch or card.get("arch")
    if not arch:
        raise ModelError(f"{source}: the architecture is not recorded with these weights; pass `arch`")
    if card.get("arch") and arch != card["arch"]:
        raise ModelError(f"`arch` {arch} does not match the architecture recorded with {source} ({card['arch']})")
    if num_classes is None:
        num_classes = card.get("num_classes") or _guess_num_classes(sd, source)
    elif card.get("num_classes") and int(card["num_classes"]) != num_classes:
        raise ModelError(f"{source} has {card['num_classes']} classes but the dataset has {num_classes}")
    shape = card.get("input_shape")
    if in_chans is None:
        in_chans = shape[0] if shape else 3
    elif shape and shape[0] != in_chans:
        raise ModelError(f"{source} expects {shape[0]}-channel input but the dataset has {in_chans} channels")
    _check_size(arch, int(num_classes), int(in_chans), sd, source)
    model = _create(arch, num_classes=int(num_classes), in_chans=int(in_chans))
    fit_state_dict(model, sd, arch=arch)
    return model if transform is None else Defended(model, transform)


def _create(arch, **kw) -> nn.Module:
    from .models import create_model

    try:
        return create_model(arch, **kw)
    except (ModelError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a library refusing a name or a size
        raise ModelError(f"cannot build {one_line(arch)[:80]} ({first_line(e)})") from None


def _check_size(arch, num_classes: int, in_chans: int, sd: dict, source) -> None:
    """Build the architecture on the ``meta`` device (no memory) and check that the weights fill
    it exactly, before it is built for real: a card naming a giant model costs nothing."""
    with torch.device("meta"):
        model = _create(arch, num_classes=num_classes, in_chans=in_chans)
    _fitted(model, sd, arch=arch)


def _guess_num_classes(sd: dict, source) -> int:
    last = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    if not last:
        raise ModelError(f"{source}: cannot tell the number of classes from the weights; pass `dataset`")
    return int(last[-1].shape[0])
