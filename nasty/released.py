"""A model you bring: what it is (architecture), what it expects (normalisation, class names),
and whether it works on the data it will be hardened, audited or plotted with.

Every command that loads a model (``import``, ``harden``, ``audit``, ``plot``) goes through
:func:`open_models`, which reads the sources, checks that they say enough, loads their data and
builds each model for it:

    [teacher], data = open_models({"teacher": "my.pt"}, arch="small-cnn", dataset="digits")
    teacher.model, teacher.card                # the module, and what is known about it

Its steps, one by one:

    norm = parse_normalization(mean="0", std="1")
    sd, card = read_model("my.pt", option="`teacher`", arch="small-cnn", normalization=norm)
    items = [("`teacher`", "my.pt", card)]     # (the option it came from, the source, what is known)
    require_options(items, dataset="digits")   # one message for all that is missing
    data = data_for(items, dataset="digits")   # the dataset, normalised as the model expects
    model = ckpt.build_model(sd, card, source="my.pt", num_classes=data.num_classes,
                             in_chans=data.input_shape[0])

Each source has a name, the keyword it came from (``teacher``), so that an error says which model
it is about; the steps take it as ``option``, in the backquotes every message uses
(:mod:`nasty.errors`).

A source is a run directory, a ``.safetensors``/``.pt`` file (read safely by
:func:`nasty.checkpoint.load_weights`) or an ``nn.Module`` (from a notebook). The model's
preprocessing is its card's ``normalization: {mean, std}`` (per channel, on the 0..1 scale);
a card without one is fed the dataset's own statistics, with a warning.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import NamedTuple, TypedDict

import torch
from torch import nn

from . import checkpoint as ckpt
from .data import TensorData, load_dataset
from .errors import DataError, ModelError, NastyError, NastyWarning, first_line, one_line

__all__ = ["PRESETS", "MODEL_CARD_KEYS", "read_model_card", "parse_normalization", "parse_input", "read_model", "require_options", "data_for", "check_accuracy",
           "open_models", "Opened", "Brought",
           "is_adversary", "identities", "label", "fmt_normalization", "TOLERANCE"]

PRESETS = {
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "unit": {"mean": [0.0], "std": [1.0]},  # plain [0, 1] scaling (x / 255)
}
MODEL_CARD_KEYS = ("arch", "dataset", "mean", "std", "normalization", "classes", "expect_accuracy", "input_size",
                   "channels", "channel_order")
TOLERANCE = 5.0  # points a model may score below the accuracy it is expected to have


def label(source) -> str:
    """How a source is named in messages and cards."""
    return f"<{type(source).__name__} module>" if isinstance(source, nn.Module) else str(source)


def read_model_card(path) -> dict:
    """The options a model card file states (JSON, or TOML for ``.toml``); every key is one of
    :data:`MODEL_CARD_KEYS`, the command-line option without its dashes, ``-`` as ``_`` (the
    Python functions take ``input_size``/``channels``/``channel_order`` as ``inputs={size, channels,
    channel_order}``)::

        # my-model.toml
        arch = "tv:resnet18"
        dataset = "cifar10"
        normalization = "imagenet"   # or mean = [0.49, 0.48, 0.45] and std = [0.25, 0.24, 0.26]
        input_size = 224
        channel_order = "rgb"
        expect_accuracy = 93.1
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib

    from .safety import parse_json, read_text
    from .schema import ModelCardFile, validate

    text = read_text(path, error=DataError)
    if str(path).lower().endswith(".toml"):
        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise DataError(f"`model_card` {path}: not valid TOML ({e})") from None
    else:
        obj = parse_json(text, f"`model_card` {path}", error=DataError)
    card = validate(ModelCardFile, obj, f"`model_card` {path}", error=DataError)
    return {k: v for k, v in card.items() if v is not None}


def _floats(value, what: str) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]  # one number for every channel: checked as the others are
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [float(v) for v in items if not isinstance(v, str) or v.strip()]
    except (TypeError, ValueError):
        raise DataError(f"`{what}` takes numbers, one per channel or one for all (e.g. 0.5 or 0.485,0.456,0.406), "
                        f"got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise DataError(f"`{what}` takes finite numbers, got {value!r}")
    return out


def parse_normalization(*, mean=None, std=None, preset: str | None = None) -> dict | None:
    """``{"mean": [...], "std": [...]}`` on the 0..1 scale from the options, or ``None`` if none is stated."""
    if preset is not None:
        if mean is not None or std is not None:
            raise DataError("give either `normalization` or `mean`/`std`, not both")
        if preset not in PRESETS:
            raise DataError(f"unknown `normalization` {preset!r}; choose one of: {', '.join(PRESETS)}")
        return {k: list(v) for k, v in PRESETS[preset].items()}
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise DataError("give `mean` and `std` together (per channel, on the 0..1 scale)")
    norm = {"mean": _floats(mean, "mean"), "std": _floats(std, "std")}
    if min(norm["std"]) <= 0:
        raise DataError(f"`std` must be > 0, got {std!r}")
    for key, ok, what in (("mean", lambda v: 0 <= v <= 1, "in [0, 1]"), ("std", lambda v: 0 < v <= 1, "in (0, 1]")):
        if not all(ok(v) for v in norm[key]):  # what a card's normalization holds (nasty.schema.Normalization)
            given = {"mean": mean, "std": std}[key]
            raise DataError(f"`{key}` takes values {what}, on the 0..1 scale of the pixels, got {one_line(repr(given))[:60]}")
    from .schema import Normalization, validate

    return validate(Normalization, norm, "`mean`/`std`", error=DataError)


def parse_input(*, size=None, channels=None, channel_order=None) -> dict | None:
    """``{size, channels, channel_order}`` of what the model expects of its images (the stated ones
    only), or ``None`` if none is stated; the data is adapted to it (:meth:`TensorData.adapted`)."""
    spec = {k: v for k, v in (("size", size), ("channels", channels), ("channel_order", channel_order)) if v is not None}
    if not spec:
        return None
    if "size" in spec and (not isinstance(spec["size"], int) or not 8 <= spec["size"] <= 1024):
        raise DataError(f"`input_size` takes a side in pixels from 8 to 1024, got {spec['size']!r}")
    if "channels" in spec and spec["channels"] not in (1, 3):
        raise DataError(f"`channels` takes 1 or 3, got {spec['channels']!r}")
    if "channel_order" in spec and spec["channel_order"] not in ("rgb", "bgr"):
        raise DataError(f"`channel_order` takes rgb or bgr, got {spec['channel_order']!r}")
    return spec


def _per_channel(norm: dict, channels: int, source) -> tuple[tuple[float, ...], tuple[float, ...]]:
    out = []
    for key in ("mean", "std"):
        v = [float(x) for x in norm[key]]
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            raise DataError(f"{source}: the normalisation has {len(v)} {key} values but the data has "
                            f"{channels} channels")
        out.append(tuple(v))
    return out[0], out[1]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


def _digest(sd: dict) -> str:
    """A sha256 of a state dict's names, shapes, dtypes and values (for a module, which has no file)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_model(source, *, option: str = "`teacher`", arch: str | None = None, normalization: dict | None = None,
               inputs: dict | None = None, classes=None, unsafe_pickle: bool = False) -> tuple[dict, dict]:
    """``(state_dict, card)`` of a run directory, weights file or ``nn.Module``; what the caller states
    (``arch``, ``normalization``, ``inputs`` from :func:`parse_input`, ``classes``) is merged into the
    card, and must agree with what it records."""
    if isinstance(source, nn.Module):
        sd = ckpt.plain_state_dict(source)
        card = {"sha256": _digest(sd)}
    else:
        sd, card = ckpt.load_weights(source, unsafe_pickle=unsafe_pickle, option=option)
    name = f"{option} {label(source)}"
    _warn_if_unfinished(card, name)
    if arch:
        if card.get("arch") and card["arch"] != arch:
            raise ModelError(f"`arch` {arch} does not match the architecture recorded with {name} ({card['arch']})")
        card = {**card, "arch": arch}
    if normalization is not None:
        known = card.get("normalization")
        if known and not _agree(known, normalization, name):
            raise DataError(f"`mean`/`std` {fmt_normalization(normalization)} differ from the normalisation "
                            f"recorded with {name} ({fmt_normalization(known)})")
        card = {**card, "normalization": normalization}
    if inputs:
        known = {k: v for k, v in (card.get("input") or {}).items() if v is not None}
        clash = {k: (v, known[k]) for k, v in inputs.items() if k in known and known[k] != v}
        if clash:
            said = ", ".join(f"{k} {v} (recorded: {was})" for k, (v, was) in clash.items())
            raise DataError(f"the input stated for {name} differs from what it records: {said}")
        card = {**card, "input": {**known, **inputs}}
    if classes is not None:
        names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
        card = {**card, "classes": names}
    return sd, card


def _warn_if_unfinished(card: dict, name: str) -> None:
    """One line when a card says its run is still in training (or was stopped before its last epoch)."""
    epoch, epochs = card.get("epoch"), card.get("epochs")
    if card.get("status") == "running" or (isinstance(epoch, int) and isinstance(epochs, int) and epoch < epochs):
        warnings.warn(NastyWarning(f"{name} is an unfinished run (epoch {epoch} of {epochs} in its card, status "
                                   f"{card.get('status', '?')}): it is used as it is now, not as it will be"),
                      stacklevel=3)


def _agree(a: dict, b: dict, source) -> bool:
    """Two normalisations that mean the same (one value stands for every channel)."""
    n = max(len(a["mean"]), len(b["mean"]), len(a["std"]), len(b["std"]))
    try:
        (ma, sa), (mb, sb) = _per_channel(a, n, source), _per_channel(b, n, source)
    except DataError:
        return False
    return _same(ma, mb) and _same(sa, sb)


def fmt_normalization(norm: dict) -> str:
    return f"mean {','.join(f'{v:g}' for v in norm['mean'])} std {','.join(f'{v:g}' for v in norm['std'])}"


def _of(data: TensorData) -> str:
    return fmt_normalization({"mean": data.mean, "std": data.std})


def require_options(items: list[tuple[str, object, dict]], *, dataset: str | None = None) -> None:
    """Name, in one message, every option that bare weights leave open (architecture, dataset).

    ``items`` are ``(option, source, card)``; the dataset may come from any card."""
    no_arch = [(o, s) for o, s, c in items if not c.get("arch")]
    no_data = [] if dataset or any(c.get("dataset") for _, _, c in items) else [(o, s) for o, s, _ in items]
    if not (no_arch or no_data):
        return
    named = list(dict.fromkeys(no_arch + no_data))
    what = " and ".join(w for w, gap in (("architecture", no_arch), ("dataset", no_data)) if gap)
    need = " and ".join(f for f, gap in (("`arch` (see `nasty models`)", no_arch), ("`dataset`", no_data)) if gap)
    who = " and ".join(f"{o} {label(s)}" for o, s in named)
    raise NastyError(f"{who} {'does' if len(named) == 1 else 'do'} not record {'its' if len(named) == 1 else 'their'} "
                     f"{what}; pass {need}")


def data_for(items: list[tuple[str, object, dict]], *, dataset: str | None = None, data: TensorData | None = None,
             data_root=None, download: bool = False, train_fraction: float = 1.0,
             flip: bool | None = None) -> TensorData:
    """The dataset the models of ``items`` (``(option, source, card)``) are used on: ``data`` as given,
    else ``dataset`` or the one their cards record; normalised as they expect: the normalisation their
    cards state (they must agree), else the dataset's own statistics (with a warning that it is
    assumed). Class names a card states are kept. Training on it flips images as ``flip`` says, else
    as the first card that records it (a run trained without flips is hardened and audited without)."""
    cards = [c for _, _, c in items]
    if data is None:
        name = dataset or next(c["dataset"] for c in cards if c.get("dataset"))
        data = load_dataset(name, root=data_root, download=download, train_fraction=train_fraction)
    elif train_fraction != 1.0:
        data = data.subset(train_fraction)
    flip = next((c["flip"] for c in cards if c.get("flip") is not None), None) if flip is None else flip
    if flip is not None and bool(flip) != data.flip:
        data = replace(data, flip=bool(flip), _device_cache={})
    specs = [(f"{o} {label(s)}", c["input"]) for o, s, c in items if c.get("input")]
    for other, spec in specs[1:]:
        if spec != specs[0][1]:
            raise DataError(f"{other} and {specs[0][0]} expect different inputs ({spec} vs {specs[0][1]})")
    if specs:
        data = data.adapted(specs[0][1])
    stated = [(f"{o} {label(s)}", c["normalization"]) for o, s, c in items if c.get("normalization")]
    if stated:
        (who, norm) = stated[0]
        for other, theirs in stated[1:]:
            if not _agree(norm, theirs, other):
                raise DataError(f"{other} and {who} expect different preprocessing ({fmt_normalization(theirs)} vs "
                                f"{fmt_normalization(norm)}); a nasty teacher is used with the preprocessing of the model it was hardened against")
        mean, std = _per_channel(norm, data.input_shape[0], who)
        if not (_same(mean, data.mean) and _same(std, data.std)):
            data = replace(data, mean=mean, std=std, _device_cache={})
    else:
        who = " and ".join(f"{o} {label(s)}" for o, s, _ in items)
        warnings.warn(NastyWarning(
            f"{who} {'does' if len(items) == 1 else 'do'} not record the preprocessing it was trained with; assuming "
            f"{data.name}'s own normalisation ({_of(data)}): state it with "
            f"`mean`/`std` or `normalization` if it was trained otherwise"), stacklevel=2)
    for option, source, c in items:
        if c.get("classes") and tuple(c["classes"]) != data.classes:
            if len(c["classes"]) != data.num_classes:
                raise DataError(f"{option} {label(source)} names {len(c['classes'])} classes but {data.name} has "
                                f"{data.num_classes}")
            data = replace(data, classes=tuple(str(x) for x in c["classes"]), _device_cache={})
            break
    return data


class Opened(NamedTuple):
    """A model brought to a command: the keyword it came from (in backquotes, as messages name it),
    the source, what is known about it (its card, with what the caller stated merged in) and the
    module, built for the data."""

    option: str
    source: object
    card: dict
    model: nn.Module

    @property
    def name(self) -> str:
        """The keyword without its backquotes (``teacher``)."""
        return self.option.strip("`")


class Brought(TypedDict, total=False):
    """What models you bring are and where their data is: the keywords that ``harden``,
    ``import_weights``, ``audit``, ``compare`` and ``render`` take (``**brought``) and pass on, as they
    are, to :func:`open_models`. Each may be left out; a run directory records the model's own.

    - ``arch``: a zoo name, ``tv:<name>`` or ``timm:<name>``, for weights that do not record it.
    - ``mean``, ``std`` (per channel on the 0..1 scale; one value for all) or ``normalization``
      (a preset of :data:`PRESETS`): the preprocessing the model was trained with.
    - ``inputs``: ``{size, channels, channel_order}`` where the model's input is not the dataset's
      images as they are.
    - ``classes``: class names in the model's output order.
    - ``unsafe_pickle``: allow full unpickling of ``.pt`` files (runs code from the file).
    - ``dataset`` (a name of :data:`nasty.data.DATASETS`) or ``data`` (a
      :class:`~nasty.data.TensorData`), ``data_root``, ``download``: the data; by default the
      dataset the model's card records.
    - ``train_fraction``: the share of the training set used (stratified).
    - ``flip``: random horizontal flips when training on the data (students, a hardened model); by
      default what the model's card records, else the dataset's choice.
    """

    arch: str
    mean: object
    std: object
    normalization: str
    inputs: dict
    classes: list
    unsafe_pickle: bool
    dataset: str
    data: TensorData
    data_root: object
    download: bool
    train_fraction: float
    flip: bool


def open_models(sources: Mapping[str, object] | Iterable[tuple[str, object]], *, arch: str | None = None,
                mean=None, std=None, normalization: str | None = None, inputs: dict | None = None, classes=None,
                unsafe_pickle: bool = False, dataset: str | None = None, data: TensorData | None = None,
                data_root=None, download: bool = False, train_fraction: float = 1.0, flip: bool | None = None,
                served: bool = False, check=None) -> tuple[list[Opened], TensorData]:
    """Every model of ``sources`` and the data they are used on, in the module doc's steps.
    ``sources``: ``{name: source}`` or ``(name, source)`` pairs, a name being the keyword the
    source came from (``teacher``); their preprocessing must agree (a mismatch names the first).
    A source that cannot be read, says too little or does not fit the data fails before the next
    step. What the caller states (``arch``, ``mean``/``std`` or a ``normalization`` preset,
    ``inputs`` ``{size, channels, channel_order}``, ``classes``) holds for every source.
    ``check(items)`` runs the caller's own checks on the ``(option, source, card)`` items before
    the data is loaded. ``served``: each model answers through its card's output transform
    (:mod:`nasty.defences`)."""
    pairs = sources.items() if isinstance(sources, Mapping) else sources
    sources = [(name if name.startswith("`") else f"`{name}`", source) for name, source in pairs]
    norm = parse_normalization(mean=mean, std=std, preset=normalization)
    spec = parse_input(**inputs or {})
    read = [(option, source, *read_model(source, option=option, arch=arch, normalization=norm, inputs=spec,
                                         classes=classes, unsafe_pickle=unsafe_pickle))
            for option, source in sources]
    items = [(option, source, card) for option, source, _, card in read]
    require_options(items, dataset=dataset or (data.name if data is not None else None))
    if check is not None:
        check(items)
    data = data_for(items, dataset=dataset, data=data, data_root=data_root, download=download,
                    train_fraction=train_fraction, flip=flip)
    fit = {"num_classes": data.num_classes, "in_chans": data.input_shape[0]}  # a mismatch fails here, named
    opened = [Opened(option, source, card, ckpt.build_model(sd, card, source=f"{option} {label(source)}",
                                                            served=served, **fit).eval())
              for option, source, sd, card in read]
    for one in opened:
        probe_input(one.model, tuple(data.input_shape), name=f"{one.option} {label(one.source)} ({one.card.get('arch')})")
    return opened, data


_SIZE_ERRORS = (RuntimeError, ValueError, AssertionError, IndexError)  # what a model says of an input it cannot take


def _runs(model: nn.Module, shape: tuple) -> BaseException | None:
    """``None`` if ``model`` answers a zero image of ``shape``, else what it raised."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=next(model.parameters(), torch.zeros(0)).device))
    except _SIZE_ERRORS as e:
        return e
    return None


def probe_input(model: nn.Module, shape: tuple, *, name: str) -> None:
    """One forward of a zero image of ``shape`` (C, H, W) in eval mode, before any work: a model
    that cannot take that size (tv:inception_v3 at 32 px, tv:vit_b_16 at anything but 224) is one
    line saying the size it takes (the exact one a ViT asks for, else the smallest, searched for)."""
    import re

    was = model.training
    model.eval()
    try:
        error = _runs(model, shape)
        if error is None:
            return
        c, h, w = shape
        exact = re.search(r"Expected (?:image (?:height|size) )?(\d+) but got", str(error))
        if exact:
            need = f"exactly {exact.group(1)} px"
        else:
            lo, hi = max(h, w), None  # lo fails; double until one runs, then bisect
            while hi is None and lo < 1024:
                trial = min(1024, lo * 2)
                if _runs(model, (c, trial, trial)) is None:
                    hi = trial
                else:
                    lo = trial
            while hi is not None and hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if _runs(model, (c, mid, mid)) is None else (mid, hi)
            if hi is None:
                raise ModelError(f"{name} cannot take {h}x{w} inputs, nor any size up to 1024 px "
                                 f"({type(error).__name__}: {first_line(error)})")
            need = f"at least {hi} px"
        raise ModelError(f"{name} cannot take {h}x{w} inputs: the architecture takes {need}; "
                         f"pass `input_size` (the data is resized to it)")
    finally:
        model.train(was)


def check_accuracy(measured: float, *, data: TensorData, expected: float | None, what: str) -> None:
    """Stop before any training when a model scores near chance (nothing expected) or more than
    :data:`TOLERANCE` points below ``expected``: almost always a preprocessing mismatch."""
    chance = 100.0 / data.num_classes
    if expected is None:
        if measured > chance + 0.1 * (100.0 - chance):
            return
        why = f"near chance level ({chance:.0f}%)"
    elif measured >= expected - TOLERANCE:
        return
    else:
        why = f"far below the {expected:.2f}% expected"
    raise NastyError(f"{what} scores {measured:.2f}% on the {data.name} test split, {why}; the likely cause is "
                     f"preprocessing: it was fed {_of(data)}, so state the "
                     f"normalisation it was trained with (`mean`/`std` or `normalization`), or pass "
                     f"`expect_accuracy` 0 to go on anyway")


def identities(card: dict) -> set[str]:
    """The sha256s a model is known by: its weights', and those of the file it was imported from."""
    src = card.get("source")
    imported = src.get("sha256") if isinstance(src, dict) else None
    return {h for h in (card.get("sha256"), card.get("source_sha256"), imported) if h}


def is_adversary(nasty_card: dict, card: dict) -> bool | None:
    """Whether ``card`` describes the adversary the nasty teacher's card records (``None``: not recorded)."""
    recorded = identities(nasty_card.get("adversary") or {})
    return bool(recorded & identities(card)) if recorded else None
