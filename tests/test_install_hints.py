"""What a missing extra says: the checkout form of the install (`pip install -e '.[timm]'`), since
`nasty` is installed from a checkout and a package of that name on an index is not this one."""

import sys

import pytest
from click.testing import CliRunner

from nasty.app.cli import main
from nasty.errors import NastyError


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def test_a_missing_timm_names_the_checkout_extra(monkeypatch):
    from nasty.models import create_model

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ModuleNotFoundError
    with pytest.raises(NastyError, match=r"pip install -e '\.\[timm\]' in a checkout"):
        create_model("timm:resnet18", num_classes=10, in_chans=1)
    code, out = run("models")
    assert code == 0 and "pip install -e '.[timm]'" in out and "nasty[" not in out


def test_a_missing_onnx_names_the_checkout_extra(monkeypatch, tmp_path):
    code, out = run("train", "--arch", "tiny-cnn", "--epochs", 1, "--out", tmp_path / "n", "-q", "--device", "cpu")
    assert code == 0, out
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, out = run("export", "--teacher", tmp_path / "n", "--out", tmp_path / "n.onnx")
    assert code == 1 and "pip install -e '.[onnx]' in a checkout" in out and "nasty[" not in out, out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "n.onnx").exists()
