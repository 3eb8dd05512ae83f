import pickle
import struct

import numpy as np
import pytest
import torch

from nasty.data import augment, load_dataset
from nasty.errors import DataError


def test_digits_split_is_fixed_stratified_uint8(digits):
    assert digits.train_x.dtype == torch.uint8 and digits.train_x.shape == (1347, 1, 8, 8)
    assert digits.test_x.shape == (450, 1, 8, 8) and digits.num_classes == 10
    again = load_dataset("digits")
    assert torch.equal(again.test_x, digits.test_x) and torch.equal(again.train_y, digits.train_y)
    share_train = torch.bincount(digits.train_y, minlength=10) / len(digits.train_y)
    share_test = torch.bincount(digits.test_y, minlength=10) / len(digits.test_y)
    assert (share_train - share_test).abs().max() < 0.01
    assert not digits.flip  # digits are not flipped


def test_train_fraction_is_stratified_subset(digits):
    part = load_dataset("digits", train_fraction=0.2)
    assert abs(len(part.train_y) - 0.2 * 1347) <= 1
    assert torch.bincount(part.train_y, minlength=10).min() >= 20
    assert torch.equal(part.test_x, digits.test_x) and part.mean == digits.mean
    with pytest.raises(DataError, match="`train_fraction`"):
        load_dataset("digits", train_fraction=1.5)
    with pytest.raises(DataError, match="too few"):
        load_dataset("digits", train_fraction=0.001)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'imagenet22k'.*digits"):
        load_dataset("imagenet22k")


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("svhn", "train_32x32.mat"),
])
def test_offline_missing_files_one_line_error(tmp_path, name, expected):
    with pytest.raises(DataError) as e:
        load_dataset(name, root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and expected in msg and str(tmp_path) in msg and "`download`" in msg
    with pytest.raises(DataError, match="`data_root`"):
        load_dataset(name)


def test_batches_normalise_and_cover_the_test_set(digits):
    xs, ys = zip(*digits.batches("test", batch_size=100))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and len(y) == 450 and torch.equal(y, digits.test_y)
    xtr = torch.cat([b for b, _ in digits.batches("train", batch_size=1347, drop_last=False, shuffle=False)])
    assert abs(float(xtr.mean())) < 1e-4 and abs(float(xtr.std()) - 1) < 1e-2


def test_epoch_order_is_seeded(digits):
    a = [y for _, y in digits.batches("train", batch_size=64, seed=1, epoch=3)]
    b = [y for _, y in digits.batches("train", batch_size=64, seed=1, epoch=3)]
    c = [y for _, y in digits.batches("train", batch_size=64, seed=1, epoch=4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert len(a) == 1347 // 64  # drop_last for training


def test_augment_crop_and_flip():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    assert torch.equal(augment(x, pad=0, flip=False), x)
    g = torch.Generator().manual_seed(0)
    out = augment(x, pad=2, flip=False, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # every crop is a window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6]) for dy in range(5) for dx in range(5))
    flipped = [augment(x, pad=0, flip=True, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(torch.equal(f[0], x[0].flip(2)) for f in flipped) and any(torch.equal(f[0], x[0]) for f in flipped)


def _write_idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def test_mnist_from_local_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 2049)
    d = load_dataset("mnist", root=tmp_path)
    assert d.train_x.shape == (40, 1, 28, 28) and d.test_x.shape == (20, 1, 28, 28) and d.num_classes == 10


def test_cifar10_from_local_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)  # our files do not have the real md5s
    d = load_dataset("cifar10", root=tmp_path, train_fraction=1.0)
    assert d.train_x.shape == (50, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    assert d.classes[0] == "c0" and d.pad == 4 and d.flip


def test_imagefolder_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "train" / c / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "train" / c / "images" / f"{i}.png")
    (tmp_path / "val" / "images").mkdir(parents=True)
    lines = []
    for i, c in enumerate(("n01", "n02", "n02")):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "val" / "images" / f"v{i}.png")
        lines.append(f"v{i}.png\t{c}\t0\t0\t1\t1")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines))
    d = load_dataset("imagefolder", root=tmp_path)
    assert d.train_x.shape == (6, 3, 16, 16) and d.test_x.shape == (3, 3, 16, 16)  # val resized to train size
    assert d.classes == ("n01", "n02") and d.test_y.tolist() == [0, 1, 1]
    assert d.pad == 2  # an eighth of 16 px (a fixed 8 was half the image)
