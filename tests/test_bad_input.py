"""Bad input, table-driven, through the command line: each case exits non-zero with a message
that names the problem, prints no traceback, and runs no payload. The hostile files of issue 18
(a published run made to attack whoever loads it) are in the same table, each case marked with
its number there; memory cases run in a subprocess whose peak memory is measured."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nasty.app.cli import main


class Payload:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, teachers):
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.safetensors").write_bytes(b"this is not a safetensors file at all")
    good = (teachers["root"] / "normal" / "model.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    huge_header = (10**12).to_bytes(8, "little") + b"{}"
    (d / "huge-header.safetensors").write_bytes(huge_header)
    with open(d / "payload.pt", "wb") as f:
        pickle.dump({"state_dict": Payload(d / "PWNED")}, f)
    with open(d / "payload-p2.pt", "wb") as f:  # protocol 2: torch's refusal names the global it blocked
        pickle.dump({"state_dict": Payload(d / "PWNED")}, f, protocol=2)
    torch.save({"weight": torch.zeros(3, 3)}, d / "other.pt")
    (d / "a-file").write_text("x")
    from nasty import checkpoint as ckpt
    from nasty.models import create_model

    # whole, honest releases that do not fit digits: 100 classes; 3-channel 32x32 input
    ckpt.save_release(d / "hundred", create_model("small-cnn", num_classes=100, in_chans=1),
                      {"arch": "small-cnn", "num_classes": 100, "input_shape": [1, 8, 8]})
    ckpt.save_release(d / "rgb", create_model("small-cnn", num_classes=10, in_chans=3),
                      {"arch": "small-cnn", "num_classes": 10, "input_shape": [3, 32, 32]})
    ckpt.save_release(d / "shapeless", create_model("small-cnn", num_classes=10, in_chans=3),
                      {"arch": "small-cnn", "num_classes": 10})  # a card that says nothing of its input
    (d / "empty-data").mkdir()
    torch.manual_seed(0)  # an untrained model: at chance level on any data
    torch.save(create_model("small-cnn", num_classes=10, in_chans=1).state_dict(), d / "untrained.pt")
    torch.save(ckpt.load_weights(teachers["root"] / "normal")[0], d / "normal.pt")  # bare weights of a good model
    return d


def cases(t, f):
    """(arguments, exit code, words the message must contain)."""
    normal, nasty = str(t / "normal"), str(t / "nasty")
    audit = ["audit", "--teacher", nasty, "--reference", normal, "--out", str(f / "audit-out")]
    harden = ["harden", "--teacher", normal, "--out", str(f / "harden-out")]
    bring = ["import", "--weights", str(f / "normal.pt"), "--arch", "small-cnn", "--dataset", "digits"]
    return [
        (["train", "--dataset", "imagenet-21k"], 2, "--dataset"),
        (["train", "--arch", "resnet9000", "--out", str(f / "t1")], 1, "unknown architecture 'resnet9000'"),
        (["train", "--epochs", "0"], 2, "--epochs"),
        (["train", "--lr", "0"], 2, "--lr"),
        (["train", "--train-fraction", "0"], 2, "--train-fraction"),
        (["train", "--train-fraction", "1.5"], 2, "--train-fraction"),
        (["train", "--device", "cuda", "--out", str(f / "t2")], 1, "no CUDA device"),
        (["train", "--device", "tpu", "--out", str(f / "t3")], 1, "--device"),
        (["train", "--out", str(f / "a-file")], 1, "is a file"),
        (["train", "--out", normal], 1, "already holds a run"),
        (["train", "--dataset", "cifar10", "--data-root", str(f / "empty-data"), "--out", str(f / "t4")], 1,
         "--download"),
        (harden[:-2] + ["--omega", "-1"], 2, "--omega"),
        (harden + ["--tau", "0"], 2, "--tau"),
        (harden + ["--init", "nowhere"], 2, "--init"),
        (["harden", "--teacher", str(f / "missing"), "--out", str(f / "h1")], 1, "no such file"),
        (["harden", "--teacher", str(f / "garbage.safetensors"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h2")], 1, "garbage.safetensors"),
        (["harden", "--teacher", str(f / "truncated.safetensors"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h3")], 1, "truncated.safetensors"),
        (["harden", "--teacher", str(f / "huge-header.safetensors"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h4")], 1, "huge-header.safetensors"),
        (["harden", "--teacher", str(f / "payload.pt"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h5")], 1, "--unsafe-pickle"),
        (["harden", "--teacher", str(f / "payload-p2.pt"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h5b")], 1, f"unsupported GLOBAL {os.system.__module__}.system"),
        (["harden", "--teacher", str(f / "other.pt"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "h6")], 1, "small-cnn"),
        (["harden", "--teacher", normal, "--arch", "tiny-cnn", "--out", str(f / "h7")], 1, "tiny-cnn"),
        (["harden", "--teacher", normal, "--dataset", "cifar10", "--data-root", str(f / "empty-data"),
          "--out", str(f / "h8")], 1, "cifar10"),
        (["harden", "--teacher", str(f / "hundred"), "--dataset", "digits", "--out", str(f / "h9")], 1,
         "has 100 classes but the dataset has 10"),
        (["harden", "--teacher", str(f / "rgb"), "--dataset", "digits", "--out", str(f / "h10")], 1,
         "expects 3-channel input"),
        (["audit", "--teacher", str(f / "hundred"), "--reference", normal, "--out", str(f / "a3")], 1, "100 classes"),
        (audit + ["--alpha", "1.5"], 2, "--alpha"),
        (audit + ["--tau", "-4"], 2, "--tau"),
        (audit + ["--attacks", "kd,fgsm"], 1, "unknown attack 'fgsm'"),
        (audit + ["--students", "tiny-cnn,resnet9000"], 1, "unknown architecture 'resnet9000'"),
        (audit + ["--seeds", "0"], 2, "--seeds"),
        (audit + ["--checkpoint-seconds", "-1"], 2, "--checkpoint-seconds"),
        (audit + ["--reference-from", str(f / "missing")], 1, "not an audit folder (it has no cells/)"),
        # issue 33: every value meets one check, whatever its source; counts are bounded before any allocation
        (audit + ["--attack-option", "kd.alpha=5"], 1, "--attack-option kd.alpha must be a number in [0, 1]"),
        (audit + ["--attack-option", "kd.tau=nan"], 1, "--attack-option kd.tau must be a finite number > 0"),
        (audit + ["--attack-option", "deepinversion.pool_size=2.5"], 1, "deepinversion.pool_size must be a whole"),
        (audit + ["--seeds", "100000000"], 2, "NASTY_MAX_SEEDS"),
        (audit + ["--attack-option", "hard-label.k=1"], 1, "hard-label has no setting 'k'; it has none"),
        (audit + ["--attack-option", "dafl.nope=1"], 1, "no setting 'nope'"),
        (audit + ["--attack-option", "dafl.oh=1"], 1, "dafl has no setting 'oh'; it has tau, one_hot, activation"),
        (audit + ["--attacks", "all,fgsm"], 1, "unknown attack 'fgsm'"),
        (audit + ["--attacks", "kd-topk", "--attack-option", "kd-topk.k=0"], 1, "kd-topk.k must be a whole number"),
        (audit + ["--attacks", "kd-topk", "--attack-option", "kd-topk.k=11"], 1, "at most the number of classes"),
        (audit + ["--attacks", "skeptical", "--attack-option", "skeptical.shallow=7"], 1,
         "skeptical.shallow must index"),
        (audit + ["--attacks", "skeptical", "--attack-option", "skeptical.delay=-2"], 1, "skeptical.delay must be"),
        (audit + ["--attacks", "kd-sweep", "--attack-option", "kd-sweep.val_fraction=1.5"], 1,
         "kd-sweep.val_fraction must be a number in (0, 1)"),
        (["audit", "--teacher", nasty, "--reference", str(f / "missing"), "--out", str(f / "a2")], 1,
         "--reference"),
        # a model you bring: what is missing is named at once; its preprocessing; its sanity checks
        (["import", "--weights", str(f / "other.pt"), "--out", str(f / "i1")], 1,
         "does not record its architecture and dataset; pass --arch (see `nasty models`) and --dataset"),
        (["audit", "--teacher", str(f / "other.pt"), "--reference", str(f / "other.pt"), "--out", str(f / "a4")], 1,
         "do not record their architecture and dataset; pass --arch"),
        (["plot", "logits", "--teacher", str(f / "normal.pt"), "--out", str(f / "p.png")], 1, "pass --arch"),
        # the commands that take run directories only say how to make one from weights
        (["defend", "--teacher", str(f / "normal.pt"), "--topk", "2", "--out", str(f / "k2")], 1,
         "defend takes a run directory (model.safetensors + card.json); make one from the weights with `nasty import`"),
        (["export", "--teacher", str(f / "normal.pt"), "--out", str(f / "n.pt2")], 1,
         "export takes a run directory (model.safetensors + card.json); make one from the weights with `nasty import`"),
        (["export", "--teacher", str(f / "shapeless"), "--out", str(f / "s.pt2")], 1,
         "its card records no input_shape, and an export traces the model on an example input of that shape"),
        (bring + ["--mean", "0", "--out", str(f / "i2")], 1, "--mean and --std together"),
        (bring + ["--mean", "0,0", "--std", "1", "--out", str(f / "i3")], 1, "2 mean values but the data has 1 channels"),
        (bring + ["--normalization", "unit", "--mean", "0", "--std", "1", "--out", str(f / "i4")], 1, "not both"),
        (bring + ["--mean", "0", "--std", "0", "--out", str(f / "i5")], 1, "--std must be > 0"),
        (bring + ["--mean", "dark", "--std", "1", "--out", str(f / "i6")], 1, "--mean takes numbers"),
        (bring + ["--normalization", "sepia", "--out", str(f / "i7")], 2, "--normalization"),
        (bring + ["--expect-accuracy", "101", "--out", str(f / "i8")], 2, "--expect-accuracy"),
        (bring + ["--out", normal], 1, "already holds a run"),
        (bring + ["--classes", "cat,dog,cow", "--out", str(f / "i10")], 1, "names 3 classes but digits has 10"),
        (["import", "--weights", str(f / "untrained.pt"), "--arch", "small-cnn", "--dataset", "digits",
          "--out", str(f / "i9")], 1, "near chance level"),
        (["harden", "--teacher", str(f / "normal.pt"), "--arch", "small-cnn", "--dataset", "digits", "--mean", "0.5",
          "--std", "0.01", "--expect-accuracy", "90", "--out", str(f / "h11")], 1, "far below the 90.00% expected"),
        (harden + ["--mean", "0", "--std", "1"], 1, "differ from the normalisation recorded with --teacher"),
        (audit + ["--arch", "tiny-cnn"], 1, "--arch tiny-cnn does not match"),
        (["plot", "tsne", "--out", str(f / "p.png")], 1, "--teacher"),
        (["plot", "omega", "--sweep", str(f / "a-file"), "--out", str(f / "p.png")], 1, "--sweep"),
        *hostile_cases(t, f),
    ]


def _copy_run(src, dst, **card_changes):
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card.update(card_changes)
    (dst / "card.json").write_text(json.dumps(card))
    return dst


def _save_safetensors(path, sd, meta):
    from safetensors.torch import save_file

    save_file(sd, str(path), metadata=meta)


def _idx(path, dims, data=None, type_byte=0x08):
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    body = data if data is not None else np.zeros(int(np.prod(dims)), dtype=np.uint8).tobytes()
    path.write_bytes(bytes([0, 0, type_byte, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body)


def _mnist(root, *, n=20, images=None, labels=None, dims=(28, 28), type_byte=0x08, magic_ok=True):
    raw = root / "MNIST" / "raw"
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", (images or n, *dims), type_byte=type_byte)
        _idx(raw / f"{split}-labels-idx1-ubyte", (n,), data=labels)
    if not magic_ok:
        p = raw / "train-images-idx3-ubyte"
        p.write_bytes(b"\x12\x34" + p.read_bytes()[2:])
    return root


def _imagefolder(root, bad: bytes | None = None, big=False):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (i * 100, 0, 0)).save(d / f"{i}.png")
    if bad is not None:
        (root / "train" / "a" / "0.png").write_bytes(bad)
    if big:  # a small file whose header says 12000x12000
        Image.new("1", (12000, 12000)).save(root / "train" / "a" / "0.png")
    return root


@pytest.fixture(scope="module")
def hostile(files, teachers):
    """Copies of the digits runs, each made hostile in one way (issue 18)."""
    t, f = teachers["root"], files
    normal = t / "normal"
    d = f / "hostile"
    d.mkdir()
    for name, changes in {
        "script": {"omega": "<script>alert(1)</script>"},  # 1
        "classes9m": {"num_classes": 9_000_000},  # 3
        "giant": {"arch": "timm:vit_giant_patch14_224"},  # 3
        "arch-int": {"arch": 5}, "arch-glob": {"arch": "timm:*"},  # 6
        "arch-escape": {"arch": "small-cnn\nError: forged line \x1b[31mred"},  # 7
        "classes-str": {"num_classes": "10"}, "classes-neg": {"num_classes": -1},
        "shape-str": {"input_shape": "1x8x8"}, "dataset-int": {"dataset": 7}, "kind-tex": {"kind": "$\\frac{$"},
        "tau-str": {"tau": "hot"}, "tau-neg": {"tau": -1.0},
    }.items():
        _copy_run(normal, d / name, **changes)
    (_copy_run(normal, d / "list") / "card.json").write_text("[1, 2]")  # 6
    (_copy_run(normal, d / "deep") / "card.json").write_text("[" * 100_000 + "]" * 100_000)  # 6
    for name in ("fifo-card", "fifo-weights"):  # 4
        run = _copy_run(normal, d / name)
        target = run / ("card.json" if name == "fifo-card" else "model.safetensors")
        target.unlink()
        os.mkfifo(target)
    run = _copy_run(normal, d / "zero-weights")  # 4
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to("/dev/zero")
    run = _copy_run(normal, d / "zero-card")  # 3
    (run / "card.json").unlink()
    (run / "card.json").symlink_to("/dev/zero")
    # 6: a bare .safetensors whose metadata lies
    sd = {k: v for k, v in ckpt_weights(normal).items()}
    for name, meta in {"meta-classes": {"num_classes": "ten"}, "meta-shape": {"input_shape": "[1, 8"},
                       "meta-arch": {"arch": "timm:*"}}.items():
        _save_safetensors(d / f"{name}.safetensors", sd,
                          {"format": "nasty", "arch": "small-cnn", "num_classes": "10", "input_shape": "[1, 8, 8]", **meta})
    # 7: weights of other dtypes, and NaN
    for name, change in {"int8": lambda v: v.to(torch.int8), "bool": lambda v: v.bool(),
                         "float64": lambda v: v.double(), "complex": lambda v: v.to(torch.complex64),
                         "nan": lambda v: v.fill_(float("nan"))}.items():
        bad = {k: (change(v.clone()) if k == "head.weight" or k.endswith("fc.weight") else v) for k, v in sd.items()}
        _save_safetensors(d / f"{name}.safetensors", bad,
                          {"format": "nasty", "arch": "small-cnn", "num_classes": "10", "input_shape": "[1, 8, 8]"})
    # 6/7: resume states
    state = torch.load(normal / "train_state.pt", weights_only=True)
    for name, obj in {"state-model": {**state, "model": 1}, "state-list": [1, 2],
                      "state-epoch": {**state, "epoch": -3}, "state-opt": {**state, "optimizer": {"state": {}, "param_groups": 3}},
                      "state-sched": {**state, "scheduler": {**state["scheduler"], "last_epoch": "x"}}}.items():
        run = _copy_run(normal, d / name)
        torch.save(obj, run / "train_state.pt")
    # 6: metrics.jsonl
    for name, content in {"metrics-list": b"[1, 2]\n", "metrics-utf8": b'{"epoch": 1}\n\xff\xfe\n',
                          "metrics-epoch": b'{"epoch": "one"}\n'}.items():
        (_copy_run(normal, d / name) / "metrics.jsonl").write_bytes(content)
    run = _copy_run(normal, d / "metrics-dir")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    run = _copy_run(normal, d / "metrics-fifo")  # 4
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    # 6: an audit folder whose cell is a list
    cells = d / "audit-list" / "cells"
    cells.mkdir(parents=True)
    (cells / "scratch-seed0.json").write_text("[]")
    # 6: sweep files
    (d / "sweep-types.json").write_text(json.dumps({"summary": [{"omega": 1, "tau": 4, "epochs": 1, "nasty_accuracy": 5}]}))
    (d / "sweep-dict.json").write_text(json.dumps({"summary": {"omega": 1}}))
    # 6: MNIST idx files
    for name, kw in {"bad-magic": {"magic_ok": False}, "float": {"type_byte": 0x0D},
                     "label255": {"labels": bytes([255] * 20)}, "fewer": {"images": 10}, "tiny": {"dims": (1, 1)}}.items():
        _mnist(d / f"mnist-{name}", **kw)
    # 3/6: image folders
    _imagefolder(d / "img-garbage", bad=b"\x89PNG\r\n\x1a\n not really")
    _imagefolder(d / "img-bomb", big=True)
    # 2: a victim outside every --out
    (d / "victim.txt").write_text("precious")
    return d


def ckpt_weights(run):
    from nasty import checkpoint as ckpt

    return ckpt.load_weights(run)[0]


def hostile_cases(t, f):
    """Issue 18's numbered cases, those that need no memory measurement (see below)."""
    d = f / "hostile"
    normal, nasty = str(t / "normal"), str(t / "nasty")
    plot = ["plot", "logits", "--out", str(f / "plots" / "p.png"), "--teacher"]
    resume = ["train", "--resume", "--device", "cpu", "--quiet", "--out"]
    audit = ["audit", "--attacks", "kd", "--seeds", "0,", "--epochs", "1", "--students", "tiny-cnn", "--no-plots",
             "--device", "cpu", "--quiet"]
    mnist = ["train", "--dataset", "mnist", "--epochs", "1", "--device", "cpu", "--out", str(f / "m-out"), "--data-root"]
    images = ["train", "--dataset", "imagefolder", "--epochs", "1", "--device", "cpu", "--out", str(f / "i-out"),
              "--data-root"]
    return [
        # 1: script in a card field is refused at load, before any report is written
        (audit + ["--teacher", str(d / "script"), "--reference", normal, "--out", str(f / "x1")], 1, "field omega"),
        # 4: FIFOs, /dev/zero
        (plot + [str(d / "fifo-card")], 1, "FIFO"),
        (plot + [str(d / "fifo-weights")], 1, "FIFO"),
        (plot + [str(d / "zero-weights")], 1, "character device"),
        (["harden", "--teacher", "/dev/zero", "--out", str(f / "x2")], 1, "character device"),
        (resume + [str(d / "metrics-fifo")], 1, "FIFO"),
        # 5: a plot never lands on a run's own files
        (["plot", "logits", "--teacher", normal, "--out", str(t / "normal" / "card.png")], 1, "card.json"),
        (["plot", "logits", "--teacher", normal, "--out", str(f / "aud" / "report.png")], 1, "report.json"),
        # 6: malformed cards
        (plot + [str(d / "list")], 1, "expected a JSON object"),
        (plot + [str(d / "deep")], 1, "nested too deeply"),
        (plot + [str(d / "arch-int")], 1, "field arch"),
        (plot + [str(d / "arch-glob")], 1, "field arch"),
        (plot + [str(d / "classes-str")], 1, "field num_classes"),
        (plot + [str(d / "classes-neg")], 1, "field num_classes"),
        (plot + [str(d / "shape-str")], 1, "field input_shape"),
        (plot + [str(d / "dataset-int")], 1, "field dataset"),
        (plot + [str(d / "kind-tex")], 1, "field kind"),
        (plot + [str(d / "tau-str")], 1, "field tau"),
        (plot + [str(d / "tau-neg")], 1, "field tau"),
        (plot + [str(d / "meta-classes.safetensors")], 1, "field num_classes"),
        (plot + [str(d / "meta-shape.safetensors")], 1, "input_shape"),
        (plot + [str(d / "meta-arch.safetensors")], 1, "field arch"),
        # 6/7: resume states
        (resume + [str(d / "state-model")], 1, "field model"),
        (resume + [str(d / "state-list")], 1, "expected a mapping"),
        (resume + [str(d / "state-epoch")], 1, "field epoch"),
        (resume + [str(d / "state-opt")], 1, "field optimizer"),
        (resume + [str(d / "state-sched")], 1, "field scheduler"),
        # 6: metrics lines
        (resume + [str(d / "metrics-list")], 1, "metrics.jsonl line 1"),
        (resume + [str(d / "metrics-utf8")], 1, "not UTF-8"),
        (resume + [str(d / "metrics-epoch")], 1, "field epoch"),
        (resume + [str(d / "metrics-dir")], 1, "a directory"),
        # 6: an audit cell that is a list
        (audit + ["--teacher", nasty, "--reference", normal, "--out", str(d / "audit-list")], 1, "scratch-seed0.json"),
        # 6: sweep files
        (["plot", "omega", "--sweep", str(d / "sweep-types.json"), "--out", str(f / "s.png")], 1, "nasty_accuracy"),
        (["plot", "omega", "--sweep", str(d / "sweep-dict.json"), "--out", str(f / "s.png")], 1, "summary"),
        # 6: MNIST idx files
        (mnist + [str(d / "mnist-bad-magic")], 1, "bad magic"),
        (mnist + [str(d / "mnist-float")], 1, "element type 0x0d"),
        (mnist + [str(d / "mnist-label255")], 1, "label 255"),
        (mnist + [str(d / "mnist-fewer")], 1, "10 train images but 20 labels"),
        (mnist + [str(d / "mnist-tiny")], 1, "expected 28x28"),
        # 6: image folders
        (images + [str(d / "img-garbage")], 1, "not a readable image"),
        (images + [str(d / "img-bomb")], 1, "NASTY_MAX_IMAGE_PIXELS"),
        # 6: plot --out with a suffix matplotlib cannot write
        (["plot", "logits", "--teacher", normal, "--out", str(f / "p.txt")], 1, ".png, .pdf, .svg"),
        # 7: weights of other dtypes, NaN
        # (a bare .safetensors records no dataset: it is named, so that the weights are what is refused)
        *[(plot[:-1] + ["--dataset", "digits", "--teacher", str(d / f"{n}.safetensors")], 1, w)
          for n, w in (("int8", "is int8"), ("bool", "is bool"), ("float64", "is float64"),
                       ("complex", "is complex64"), ("nan", "NaN"))],
        # 7: control characters from a file are escaped, the message stays one line
        (plot + [str(d / "arch-escape")], 1, "small-cnn\\nError: forged line \\x1b[31mred"),
    ]


class Hung(BaseException):  # not caught by CliRunner
    pass


def _alarm(signum, frame):
    raise Hung()


def test_every_bad_input_gets_a_one_line_error(teachers, files, hostile):
    (files / "aud").mkdir(exist_ok=True)
    (files / "aud" / "report.json").write_text("{}")
    table = cases(teachers["root"], files)
    assert len(table) >= 60
    before = {p: p.read_bytes() for p in teachers["root"].rglob("*") if p.is_file()}
    old = signal.signal(signal.SIGALRM, _alarm)
    for args, code, words in table:
        signal.alarm(60)  # a case that hangs (a FIFO read) fails instead of stopping the suite
        try:
            res = CliRunner().invoke(main, args)
        except Hung:
            pytest.fail(f"nasty {' '.join(args)} hung")
        finally:
            signal.alarm(0)
        where = f"nasty {' '.join(args)}:\n{res.output}"
        assert res.exit_code == code, where
        assert words in res.output, where
        # every option a message names is one of this command's flags (a keyword left in backquotes is not)
        assert not re.findall(r"`[a-z][a-z0-9_]*`", res.output), where
        assert "Traceback" not in res.output and isinstance(res.exception, (SystemExit, type(None))), where
        assert "Warning" not in res.output and "weights_only` set to `False`" not in res.output, where
        lines = [line for line in res.output.strip().splitlines() if line.startswith("Error")]
        assert len(lines) == 1, where  # the message is one line
    signal.signal(signal.SIGALRM, old)
    assert not (files / "PWNED").exists()  # the pickle payload never ran
    after = {p: p.read_bytes() for p in teachers["root"].rglob("*") if p.is_file()}
    assert after == before  # no run's file was changed (5: plot --out RUN/card.png)


_HIGH_WATER = ("import atexit, re, sys\n"
               "_hwm = sys.argv.pop(1)\n"
               "def _report():\n"
               "    with open(_hwm, 'w') as f:\n"
               "        f.write(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
               "atexit.register(_report)\n")


def _peak(args, timeout=120, code=None):
    """Run the CLI (or `code`) in a subprocess: (exit code, stderr, its own peak resident memory in
    MB). The peak is the child's VmHWM read at exit: ru_maxrss of a child forked from pytest
    starts at pytest's own size."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TQDM_DISABLE": "1"}
    code = code or "import runpy; sys.argv[0] = 'nasty'; runpy.run_module('nasty', run_name='__main__')"
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as err:
        hwm = Path(tmp) / "hwm"
        p = subprocess.Popen([sys.executable, "-c", _HIGH_WATER + code, str(hwm), *map(str, args)], env=env,
                             stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            pytest.fail(f"nasty {' '.join(map(str, args))} hung")
        err.seek(0)
        return p.returncode, err.read(), int(hwm.read_text()) / 1024


@pytest.mark.slow
def test_small_hostile_files_cannot_take_memory(teachers, files, hostile, tmp_path):
    """3: a card with 9M classes, a card naming a giant timm model, a small .pt declaring a huge
    tensor, a 12000x12000 PNG header, a card that is /dev/zero: each a one-line error, and the
    process never holds more than 450 MB above what importing the toolkit's libraries takes on this
    machine (each case took 4-5 GB on c8d7cd9; a torch wheel with CUDA libraries alone maps about
    1.5 GB, so the bound is relative)."""
    import zipfile

    baseline = _peak([], code="import torch, torchvision, matplotlib.pyplot, sklearn.datasets, nasty.app.cli, nasty.data, "
                              "nasty.models, attacks")[2]

    d = hostile
    bomb = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(4)}, bomb)
    with zipfile.ZipFile(bomb) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            # the tensor's record: 600 MB of zeros, a few hundred KB compressed
            z.writestr(name, b"\0" * (600 << 20) if name.endswith("data/0") else data)
    assert bomb.stat().st_size < 5 << 20
    plot = ["plot", "logits", "--out", tmp_path / "p.png", "--teacher"]
    for args, words in [(plot + [d / "classes9m"], "NASTY_MAX_CLASSES"),
                        (plot + [d / "giant"], "missing"),
                        (plot + [d / "zero-card"], "character device"),
                        (["harden", "--teacher", bomb, "--arch", "small-cnn", "--dataset", "digits",
                          "--out", tmp_path / "h"], "compressed"),
                        (["train", "--dataset", "imagefolder", "--data-root", d / "img-bomb", "--out", tmp_path / "i"],
                         "NASTY_MAX_IMAGE_PIXELS")]:
        code, err, peak = _peak(args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and words in lines[0], (args, err)
        assert peak < baseline + 450, (args, peak, baseline)


def test_planted_links_at_temporary_names_are_never_followed(hostile, tmp_path):
    """2: links at every name the old writer would use in this process (`.NAME.tmp<pid>`): a run
    writes its files and the link targets stay as they were."""
    victim = hostile / "victim.txt"
    out = tmp_path / "run"
    out.mkdir()
    for name in ("card.json", "model.safetensors", "train_state.pt", "metrics.jsonl"):
        (out / f".{name}.tmp{os.getpid()}").symlink_to(victim)
    res = CliRunner().invoke(main, ["train", "--epochs", "1", "--arch", "mlp", "--device", "cpu", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious"
    for name in ("card.json", "model.safetensors", "train_state.pt", "metrics.jsonl"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    for again in ("--resume", "--force"):  # the same links meet a resumed run and a run started over
        res = CliRunner().invoke(main, ["train", "--epochs", "1", "--arch", "mlp", "--device", "cpu", "-q", again,
                                        "--out", str(out)])
        assert res.exit_code == 0 and victim.read_text() == "precious", res.output


def test_reports_escape_text_from_files():
    """1: whatever reaches a report from a file is escaped: HTML once, markdown's | and markup."""
    from attacks.audit import TABLE_HEADER, format_html, format_markdown

    evil = "<script>alert(1)</script>|x"
    row = {"attack": "kd", "student": evil, "acc_scratch": {"mean": 1, "std": 0}, "acc_from_normal": {"mean": 1, "std": 0},
           "acc_from_nasty": {"mean": 1, "std": 0}, "immunity": 0.0, "below_scratch": 0.0}
    report = {"dataset": evil, "train_fraction": 1.0, "teacher_cost": 0.0, "seconds": 1.0, "nasty_version": evil,
              "teachers": {"normal": {"arch": evil, "accuracy": 1.0}, "nasty": {"arch": evil, "accuracy": 1.0,
                                                                                "omega": evil, "tau": evil}},
              "settings": {"students": [evil], "epochs": 1, "batch_size": 1, "lr": 0.1, "alpha": 0.9, "tau": evil},
              "runs": [{"seed": 0}], "summary": [row]}
    page = format_html(report, {})
    assert "<script>" not in page and page.count("&lt;script&gt;") >= 7
    md = format_markdown(report)
    assert "<script>" not in md and "|x" not in md.replace("\\|x", "")
    table = [line for line in md.splitlines() if line.startswith("| kd")]
    # no pipe but the table's own: one per column, plus one
    assert len(table) == 1 and table[0].count("|") - table[0].count("\\|") == len(TABLE_HEADER) + 1


def test_a_read_only_output_folder_is_one_line(teachers, tmp_path, monkeypatch):
    """6: a folder that cannot be written (simulated: the tests run as root) for plot and train --force."""
    import errno
    import pathlib

    ro = tmp_path / "ro"
    real_mkdir, real_unlink = pathlib.Path.mkdir, os.unlink

    def mkdir(self, *a, **k):
        if str(self).startswith(str(ro)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **k)

    def unlink(path, *a, **k):
        if str(path).startswith(str(ro)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_unlink(path, *a, **k)

    shutil.copytree(teachers["root"] / "normal", ro)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "unlink", unlink)
    for args in (["plot", "logits", "--teacher", str(ro), "--out", str(ro / "sub" / "p.png")],
                 ["train", "--epochs", "1", "--device", "cpu", "--force", "--out", str(ro)]):
        res = CliRunner().invoke(main, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (args, res.output, res.exception)
        assert len(lines) == 1 and os.strerror(errno.EACCES) in lines[0], (args, res.output)
