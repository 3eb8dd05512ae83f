"""Bad input, table-driven, through the command line: each case exits non-zero with a message
that names the problem, prints no traceback, and runs no payload."""

import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from nasty.cli import main


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
        (audit + ["--attack-option", "dafl.nope=1"], 1, "no setting 'nope'"),
        (audit + ["--attack-option", "dafl.oh=1"], 1, "dafl has no setting 'oh'; it has tau, one_hot, activation"),
        (audit + ["--attacks", "all,fgsm"], 1, "unknown attack 'fgsm'"),
        (audit + ["--attacks", "kd-topk", "--attack-option", "kd-topk.k=0"], 1, "kd-topk.k must be a whole number"),
        (audit + ["--attacks", "kd-topk", "--attack-option", "kd-topk.k=11"], 1, "at most the number of classes"),
        (audit + ["--attacks", "skeptical", "--attack-option", "skeptical.shallow=7"], 1,
         "skeptical.shallow must index"),
        (audit + ["--attacks", "skeptical", "--attack-option", "skeptical.delay=-2"], 1, "skeptical.delay must be"),
        (audit + ["--attacks", "kd-sweep", "--attack-option", "kd-sweep.val_fraction=1.5"], 1,
         "kd-sweep.val_fraction must be in (0, 1)"),
        (["audit", "--teacher", nasty, "--reference", str(f / "missing"), "--out", str(f / "a2")], 1,
         "--reference"),
        # a model you bring: what is missing is named at once; its preprocessing; its sanity checks
        (["import", "--weights", str(f / "other.pt"), "--out", str(f / "i1")], 1,
         "does not record its architecture and dataset; pass --arch (see `nasty models`) and --dataset"),
        (["audit", "--teacher", str(f / "other.pt"), "--reference", str(f / "other.pt"), "--out", str(f / "a4")], 1,
         "do not record their architecture and dataset; pass --arch"),
        (["plot", "logits", "--teacher", str(f / "normal.pt"), "--out", str(f / "p.png")], 1, "pass --arch"),
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
    ]


def test_every_bad_input_gets_a_one_line_error(teachers, files):
    table = cases(teachers["root"], files)
    assert len(table) >= 20
    for args, code, words in table:
        res = CliRunner().invoke(main, args)
        where = f"nasty {' '.join(args)}:\n{res.output}"
        assert res.exit_code == code, where
        assert words in res.output, where
        assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, TypeError)), where
        assert "Warning" not in res.output and "weights_only` set to `False`" not in res.output, where
        lines = [line for line in res.output.strip().splitlines() if line.startswith("Error")]
        assert len(lines) == 1, where  # the message is one line
    assert not (files / "PWNED").exists()  # the pickle payload never ran
