"""Datasets as uint8 tensors in memory; augmentation and normalisation as batched ops.

    data = load_dataset("digits")                     # embedded, no files needed
    data = load_dataset("cifar10", root="~/data")     # torchvision files under root
    for x, y in data.batches("train", batch_size=128, device="cuda", seed=0, epoch=3):
        ...                                           # x: normalised float, on the device

Every dataset becomes a :class:`TensorData`: ``train_x``/``test_x`` uint8 ``(N, C, H, W)``,
int64 labels, class names, and the per-channel mean/std of its training images. The data
moves to the device once; a batch is cropped (zero padding), flipped and normalised there,
with random numbers from a generator seeded by ``(seed, epoch)`` so that an epoch is
reproducible on its own (which is what makes ``--resume`` exact).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import accel
from .errors import DataError, first_line, one_line
from ._images import IMAGE_EXTS, _check_decoded, _open_image, _pixels  # noqa: F401 (bench/fuzz.py reads them here)
from .safety import read_bytes, read_text

__all__ = ["TensorData", "load_dataset", "DATASETS", "augment", "mix_seed"]


@dataclass(frozen=True)
class TensorData:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    pad: int = 0  # random-crop padding (0: no crop)
    flip: bool = False  # random horizontal flip
    train_fraction: float = 1.0
    validation: dict | None = None  # {fraction, seed, size} when a validation split was carved out of train
    input: dict | None = None  # {size, channels, channel_order} when adapted to a model's input (see `adapted`)
    full_size: int | None = None  # training images before `subset` took its share (None: these are all)
    # per training image, the group it belongs to (None: each its own): images of one group share content
    # (digit pairs: the same digit images), so a validation split holds out whole groups
    groups: torch.Tensor | None = field(default=None, repr=False)
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def describe(self) -> dict:
        """What a checkpoint card records about the data."""
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "flip": self.flip,
            "train_fraction": self.train_fraction,
            "train_size": len(self.train_y),
            "test_size": len(self.test_y),
            **({"validation": self.validation} if self.validation else {}),
            **({"input": self.input} if self.input else {}),
        }

    def flip_choice(self) -> dict:
        """``{"flip": ...}`` where the flips differ from the dataset's own choice, else ``{}``: what a
        resumed run must repeat (runs made before the option hold the dataset's choice)."""
        default = DATASETS[self.name][2] if self.name in DATASETS else self.flip
        return {} if self.flip == default else {"flip": self.flip}

    def adapted(self, spec: dict | None) -> "TensorData":
        """The images as a model expects them: ``spec`` = ``{size, channels, channel_order}`` (each
        optional): resized to ``size`` x ``size`` (bilinear, antialiased), grey repeated to 3 channels
        or colour reduced to luminance, channels reversed for ``channel_order: bgr``. The statistics
        are those of the adapted training images. ``None`` or an empty spec: the data as it is."""
        spec = {k: v for k, v in (spec or {}).items() if v is not None}
        if not spec or spec == (self.input or {}):
            return self
        if self.input:
            raise DataError(f"dataset '{self.name}' is already adapted to {self.input}; cannot adapt it to {spec}")
        c, h, w = self.input_shape
        size, channels = spec.get("size") or h, spec.get("channels") or c
        if channels not in (1, 3) or c not in (1, 3) or size < 8:
            raise DataError(f"cannot adapt {c}-channel {h}x{w} images to {channels} channels at {size}x{size} "
                            f"(1 or 3 channels, at least 8x8)")
        _check_decoded(f"dataset '{self.name}' at {channels}x{size}x{size}", len(self.train_y) + len(self.test_y),
                       channels, size)

        def convert(x: torch.Tensor) -> torch.Tensor:
            out = torch.empty((len(x), channels, size, size), dtype=torch.uint8)
            for i in range(0, len(x), 4096):
                b = x[i : i + 4096].float()
                if (h, w) != (size, size):
                    b = F.interpolate(b, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                if channels == 3 and c == 1:
                    b = b.expand(-1, 3, -1, -1)
                elif channels == 1 and c == 3:
                    b = (b * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
                if spec.get("channel_order") == "bgr":
                    b = b.flip(1)
                out[i : i + len(b)] = b.round().clamp_(0, 255).to(torch.uint8)
            return out

        train_x, test_x = convert(self.train_x), convert(self.test_x)
        mean, std = _channel_stats(train_x.numpy())
        return replace(self, train_x=train_x, test_x=test_x, mean=mean, std=std, input=spec, _device_cache={})

    def on(self, device) -> tuple[torch.Tensor, ...]:
        """(train_x, train_y, test_x, test_y, mean, std) on ``device``, moved once."""
        device = torch.device(device)
        if device not in self._device_cache:
            shape = (1, -1, 1, 1)
            self._device_cache[device] = (
                *(accel.to_device(t, device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)),
                torch.tensor(self.mean, device=device).view(shape) * 255,
                torch.tensor(self.std, device=device).view(shape) * 255,
            )
        return self._device_cache[device]

    def batches(self, split: str, *, batch_size: int, device="cpu", seed: int = 0, epoch: int = 0,
                shuffle: bool | None = None, drop_last: bool | None = None):
        """Yield ``(x, y)`` batches: normalised float images and labels, on ``device``.

        The training split is shuffled and augmented by default; the test split is not.
        """
        train = split == "train"
        shuffle = train if shuffle is None else shuffle
        drop_last = train if drop_last is None else drop_last
        xs, ys, xt, yt, mean, std = self.on(device)
        x_all, y_all = (xs, ys) if train else (xt, yt)
        n = len(y_all)
        gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
        order = (torch.randperm(n, generator=gen) if shuffle else torch.arange(n)).to(x_all.device)
        dev_gen = torch.Generator(device=x_all.device).manual_seed(mix_seed(seed, epoch, 1)) if train else None
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            x = x_all[idx]
            if train:
                x = augment(x, pad=self.pad, flip=self.flip, generator=dev_gen)
            x = (x.float() - mean) / std
            yield accel.layout(x, x.device), y_all[idx]

    def subset(self, fraction: float, *, seed: int = 0) -> "TensorData":
        """A stratified ``fraction`` of the training set (same test set, same normalisation)."""
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"`train_fraction` must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        from sklearn.model_selection import train_test_split

        y = self.train_y.numpy()
        try:
            keep, _ = train_test_split(np.arange(len(y)), train_size=fraction, stratify=y, random_state=seed)
        except ValueError:
            raise DataError(
                f"`train_fraction` {fraction} keeps too few of {len(y)} training images to have every "
                f"one of {self.num_classes} classes; use a larger fraction"
            ) from None
        keep = torch.from_numpy(np.sort(keep))
        return replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep], train_fraction=fraction,
                       full_size=len(y), groups=None if self.groups is None else self.groups[keep], _device_cache={})

    def split_validation(self, fraction: float = 0.2, *, seed: int = 0) -> tuple["TensorData", "TensorData"]:
        """Carve a stratified, seeded validation split out of the training set.

        Returns ``(fit, val)``: both train on the remaining images; ``fit`` keeps the real test
        split (read once, for the final report) and ``val`` has the validation images in place
        of it, so every choice (omega, tau, early stop) is scored with ``evaluate(model, val)``
        and never sees a test image. A dataset with ``groups`` holds out whole groups (``fraction``
        of them, seeded), so that no validation image shares content with a training one.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
        split = self._stratified_split if self.groups is None else self._grouped_split
        rest, held = (torch.from_numpy(np.sort(i)) for i in split(fraction, seed))
        info = {"fraction": fraction, "seed": seed, "size": len(held)}
        if self.groups is not None:
            info["groups"] = len(torch.unique(self.groups[held]))
        fit = replace(self, train_x=self.train_x[rest], train_y=self.train_y[rest], validation=info,
                      groups=None if self.groups is None else self.groups[rest], _device_cache={})
        val = replace(fit, test_x=self.train_x[held], test_y=self.train_y[held], _device_cache={})
        return fit, val

    def _stratified_split(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        y = self.train_y.numpy()
        try:
            return train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
        except ValueError:
            raise DataError(f"a validation split of {fraction:g} of {len(y)} training images cannot hold every "
                            f"one of {self.num_classes} classes; use more training data") from None

    def _grouped_split(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        groups = self.groups.numpy()
        ids = np.unique(groups)
        n = int(round(fraction * len(ids)))
        if not 1 <= n < len(ids):
            raise DataError(f"a validation split of {fraction:g} of {len(ids)} groups of training images holds "
                            f"{n} of them; use a fraction that holds between 1 and {len(ids) - 1}")
        held = np.isin(groups, np.random.default_rng(seed).choice(ids, n, replace=False))
        return np.flatnonzero(~held), np.flatnonzero(held)


def mix_seed(*ints: int) -> int:
    """A stable 63-bit seed from a few integers."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def augment(x: torch.Tensor, *, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per sample, as batched ops."""
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=generator)
        rows = (dy + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# --------------------------------------------------------------------------- sources


def _digits(root=None, download=False):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.25, stratify=d.target, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    y = d.target.astype(np.int64)
    return images[tr], y[tr], images[te], y[te], tuple(str(c) for c in range(10))


PAIRS_TRAIN, PAIRS_TEST = 6000, 2000  # digit-pairs: 60 training and 20 test pairs per class
PAIRS_FOLDS = 10  # digit-pairs: a training pair takes both halves from one fold of the digits' training images


def _digit_pairs(root=None, download=False):
    """Two of the embedded digits side by side, read as a number from 00 to 99: 100 classes, 8x16
    grey images. Classes that share a tens or a units digit look alike, so a teacher's wrong-class
    probabilities say something about each half: structure for soft outputs to carry (Müller et
    al., Subclass Distillation, 2020: transfer works best with many related classes). Training pairs
    are made of digits' training images only, test pairs of its test images only; every class has
    the same number of pairs (``PAIRS_TRAIN`` / ``PAIRS_TEST``); the draw is fixed (seeded). Each
    digit's training images are dealt evenly into ``PAIRS_FOLDS`` folds, and a training pair takes
    both halves from one fold, its group: a validation split holds out whole folds, so that no
    validation pair shows a digit image that a training pair shows (pairs drawn across folds share
    them: a hardened teacher scored 99.75% on such a split and 93.25% on the test pairs)."""
    xtr, ytr, xte, yte, _ = _digits()
    rng = np.random.default_rng(0)
    fold = np.zeros(len(ytr), dtype=np.int64)
    for d in range(10):
        mine = rng.permutation(np.flatnonzero(ytr == d))
        fold[mine] = np.arange(len(mine)) % PAIRS_FOLDS

    def pairs(x, y, folds, n):
        label = np.arange(n, dtype=np.int64) % 100
        group = (np.arange(n) // 100) % (int(folds.max()) + 1)
        pool = {(d, g): np.flatnonzero((y == d) & (folds == g)) for d in range(10) for g in np.unique(folds)}
        left = np.array([rng.choice(pool[c // 10, g]) for c, g in zip(label, group)])
        right = np.array([rng.choice(pool[c % 10, g]) for c, g in zip(label, group)])
        return np.concatenate([x[left], x[right]], axis=3), label, group

    train_x, train_y, groups = pairs(xtr, ytr, fold, PAIRS_TRAIN)
    test_x, test_y, _ = pairs(xte, yte, np.zeros(len(yte), dtype=np.int64), PAIRS_TEST)
    return train_x, train_y, test_x, test_y, tuple(f"{c:02d}" for c in range(100)), groups


def _need(root, name, files, hint):
    """Raise a one-line DataError naming the files that are missing under root."""
    if root is None:
        raise DataError(f"dataset '{name}' needs `data_root` DIR holding {hint} (or add `download` to fetch it)")
    root = Path(root).expanduser()
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        raise DataError(f"dataset '{name}' not found: missing {shown} under {root}; put {hint} there, "
                        f"or add `download` to fetch it")


def _torchvision(name, cls_name, root, download, files, hint, split_kw):
    import torchvision.datasets as tvd

    if not download:
        _need(root, name, files, hint)
    root = Path(root or "data").expanduser()
    cls = getattr(tvd, cls_name)
    out = []
    for split in ("train", "test"):
        try:
            ds = cls(str(root), download=download, **split_kw(split))
        except ImportError as e:  # svhn reads .mat files with scipy
            raise DataError(f"dataset '{name}' needs the package {e.name or 'scipy'}: pip install {e.name or 'scipy'}") from None
        except (RuntimeError, OSError, ValueError) as e:  # corrupted files, failed download
            raise DataError(f"dataset '{name}' could not be loaded from {root}: {first_line(e)}") from None
        x = ds.data
        x = x.numpy() if torch.is_tensor(x) else np.asarray(x)
        if x.ndim == 3:  # (N, H, W) grey
            x = x[:, None]
        elif x.shape[-1] == 3:  # (N, H, W, 3)
            x = x.transpose(0, 3, 1, 2)
        y = getattr(ds, "targets", None)
        y = ds.labels if y is None else y
        out += [np.ascontiguousarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)]
    classes = tuple(getattr(ds, "classes", None) or (str(c) for c in range(int(out[1].max()) + 1)))
    return (*out, classes)


def _mnist_like(folder, cls_name, name):
    files = [f"{folder}/raw/{f}" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    hint = f"{folder}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"

    def load(root=None, download=False):
        if download:  # torchvision fetches the files; we read them ourselves, checked
            _torchvision(name, cls_name, root, True, files, hint, lambda s: {"train": s == "train"})
        _need(root, name, files, hint)
        base = Path(root or "data").expanduser()
        out = []
        for split in ("train", "t10k"):
            x = _read_idx(base / folder / "raw" / f"{split}-images-idx3-ubyte", ndim=3)
            y = _read_idx(base / folder / "raw" / f"{split}-labels-idx1-ubyte", ndim=1)
            if x.shape[1:] != (28, 28):
                raise DataError(f"{base / folder / 'raw' / f'{split}-images-idx3-ubyte'}: images are "
                                f"{x.shape[1]}x{x.shape[2]}, expected 28x28")
            if len(x) != len(y) or not len(y):
                raise DataError(f"dataset '{name}': {len(x)} {split} images but {len(y)} labels under {base / folder}")
            if int(y.max()) > 9:
                raise DataError(f"{base / folder / 'raw' / f'{split}-labels-idx1-ubyte'}: label {int(y.max())} "
                                f"(expected 0..9)")
            out += [np.ascontiguousarray(x[:, None]), y.astype(np.int64)]
        return (*out, tuple(str(c) for c in range(10)))

    return load


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST's format) with ``ndim`` dimensions, every header
    field checked against the file's length before anything is allocated."""
    data = read_bytes(path, limit_name="DATA_BYTES", error=DataError)
    head = 4 + 4 * ndim
    if len(data) < head or data[:2] != b"\0\0" or data[3] != ndim:
        raise DataError(f"{path}: not an idx file with {ndim} dimension(s) (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{path}: element type 0x{data[2]:02x}, expected 0x08 (unsigned bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if int(np.prod(dims, dtype=object)) != len(data) - head:
        raise DataError(f"{path}: the header declares {'x'.join(map(str, dims))} bytes of data but the file holds "
                        f"{len(data) - head}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)  # a view: no copy of a large file


def _cifar10(root=None, download=False):
    files = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]
    hint = "cifar-10-batches-py/{data_batch_1..5,test_batch} (from cifar-10-python.tar.gz)"
    return _torchvision("cifar10", "CIFAR10", root, download, files, hint, lambda s: {"train": s == "train"})


def _cifar100(root=None, download=False):
    files = ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]
    hint = "cifar-100-python/{train,test,meta} (from cifar-100-python.tar.gz)"
    return _torchvision("cifar100", "CIFAR100", root, download, files, hint, lambda s: {"train": s == "train"})


def _svhn(root=None, download=False):
    files = ["train_32x32.mat", "test_32x32.mat"]
    x = _torchvision("svhn", "SVHN", root, download, files, "train_32x32.mat and test_32x32.mat",
                     lambda s: {"split": s})
    return (*x[:4], tuple(str(c) for c in range(10)))


def _imagefolder(root=None, download=False, image_size: int | None = None):
    """``root/train/<class>/**/image`` and ``root/val`` as either ``<class>/**/image`` or
    Tiny-ImageNet's ``images/`` + ``val_annotations.txt``. Decoded once into memory."""
    from tqdm.auto import tqdm

    if download:
        raise DataError("dataset 'imagefolder' cannot be downloaded; point `data_root` at a folder with train/ and val/")
    _need(root, "imagefolder", ["train", "val"], "train/<class>/... and val/<class>/... (or Tiny-ImageNet's val/images + val_annotations.txt)")
    root = Path(root).expanduser()
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"dataset 'imagefolder': no class folders in {root / 'train'}")
    index = {c: i for i, c in enumerate(classes)}

    def files_under(folder):
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)

    train = [(p, index[c]) for c in classes for p in files_under(root / "train" / c)]
    ann = root / "val" / "val_annotations.txt"
    if ann.exists():
        val = []
        for line in read_text(ann, error=DataError).splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    else:
        val = [(p, index[c]) for c in classes if (root / "val" / c).is_dir() for p in files_under(root / "val" / c)]
    if not train or not val:
        raise DataError(f"dataset 'imagefolder': found {len(train)} training and {len(val)} validation images under {root}")

    size = image_size or _open_image(train[0][0], lambda im: im.size[0])
    if size < 8:
        raise DataError(f"dataset 'imagefolder': images of {size}x{size} pixels are too small (at least 8x8)")
    _check_decoded(f"dataset 'imagefolder' at {size}x{size} pixels", len(train) + len(val), 3, size)

    def decode(items, what):
        x = np.empty((len(items), 3, size, size), dtype=np.uint8)
        for i, (p, _) in enumerate(tqdm(items, desc=f"decode {what}", leave=False, disable=None)):
            x[i] = _open_image(p, lambda im: _pixels(im, size))
        return x, np.array([c for _, c in items], dtype=np.int64)

    return (*decode(train, "train"), *decode(val, "val"), tuple(classes))


# name -> (loader, crop padding, horizontal flip)
DATASETS = {
    "digits": (_digits, 0, False),
    "digitpairs": (_digit_pairs, 0, False),
    "mnist": (_mnist_like("MNIST", "MNIST", "mnist"), 0, False),
    "fashionmnist": (_mnist_like("FashionMNIST", "FashionMNIST", "fashionmnist"), 2, True),
    "cifar10": (_cifar10, 4, True),
    "cifar100": (_cifar100, 4, True),
    "svhn": (_svhn, 4, False),
    "imagefolder": (_imagefolder, 8, True),  # the padding scales with the image size (load_dataset)
}


def _channel_stats(x: np.ndarray, chunk: int = 4096):
    """Per-channel mean and std of uint8 images on the 0..1 scale, in chunks (float64 sums)."""
    s = np.zeros(x.shape[1]); s2 = np.zeros(x.shape[1])
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].astype(np.float64) / 255.0
        s += c.sum(axis=(0, 2, 3)); s2 += (c * c).sum(axis=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-6))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_dataset(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                 train_fraction: float = 1.0, flip: bool | None = None) -> TensorData:
    """Load a dataset by name into memory. See :data:`DATASETS` for the names. ``flip``: random
    horizontal flips in training (``None``: the dataset's own choice; off for digits and text)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    if not 0.0 < train_fraction <= 1.0:
        raise DataError(f"`train_fraction` must be in (0, 1], got {train_fraction}")
    loader, pad, default_flip = DATASETS[key]
    flip = default_flip if flip is None else bool(flip)
    xtr, ytr, xte, yte, classes, *groups = loader(root=root, download=download)  # groups: digit pairs' folds
    if key == "imagefolder":  # an eighth of the image, as Tiny-ImageNet's 8 of 64 and CIFAR's 4 of 32
        pad = max(1, round(xtr.shape[-1] / 8))
    mean, std = _channel_stats(xtr)
    with warnings.catch_warnings():  # idx files are read-only views (no copy); nothing writes into a dataset
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [torch.from_numpy(a) for a in (xtr, ytr, xte, yte)]
    data = TensorData(name=key, train_x=tensors[0], train_y=tensors[1], test_x=tensors[2], test_y=tensors[3],
                      classes=tuple(classes), mean=mean, std=std, pad=pad, flip=flip,
                      groups=torch.from_numpy(groups[0]) if groups else None)
    return data.subset(train_fraction)
