"""A model this toolkit did not train: README's worked example, run as written (short epochs);
its description (arch, dataset, normalisation) through every command; the sanity checks."""

import json
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nasty.cli import main
from nasty.errors import NastyError, NastyWarning

README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def readme_example():
    """The worked example of README's "Harden your own model": its script and its commands."""
    text = README.read_text()
    script = re.search(r"```python\n(# own_model\.py.*?)```", text, re.S).group(1)
    commands = re.search(r"```bash\npython own_model\.py\n(.*?)```", text, re.S).group(1)
    return script, [shlex.split(line) for line in commands.splitlines() if line.startswith("nasty ")]


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """my.pt as README's script writes it (fewer epochs), in a folder of its own."""
    import os

    d = tmp_path_factory.mktemp("own")
    script, _ = readme_example()
    assert "EPOCHS = 15" in script
    cwd = os.getcwd()
    os.chdir(d)
    try:
        exec(compile(script.replace("EPOCHS = 15", "EPOCHS = 6"), "own_model.py", "exec"), {})
    finally:
        os.chdir(cwd)
    return d


def test_readme_example_runs_as_written(own, monkeypatch):
    monkeypatch.chdir(own)
    _, commands = readme_example()
    assert [c[1] for c in commands] == ["import", "harden", "audit", "plot"]
    short = {"harden": ["--epochs", "3"], "audit": ["--epochs", "1", "--no-plots"], "import": [], "plot": []}
    outputs = {}
    for cmd in commands:
        code, out = run(*cmd[1:], *short[cmd[1]], "--device", "cpu") if cmd[1] != "plot" else run(*cmd[1:])
        assert code == 0, f"{' '.join(cmd)}\n{out}"
        assert "warning" not in out, out  # the example states everything it needs
        outputs[cmd[1]] = out
    card = json.loads(Path("runs/mine/card.json").read_text())
    assert card["kind"] == "imported" and card["arch"] == "small-cnn" and card["dataset"] == "digits"
    assert card["normalization"] == {"mean": [0.0], "std": [1.0]} and card["accuracy"] > 90
    from nasty.checkpoint import sha256_file

    assert card["source"]["sha256"] == sha256_file("my.pt") and card["sha256"] == sha256_file("runs/mine/model.safetensors")
    assert f"test accuracy {card['accuracy']:.2f}% with mean 0 std 1" in outputs["import"]
    nasty = json.loads(Path("runs/mine-nasty/card.json").read_text())
    assert nasty["normalization"] == card["normalization"]  # trained with the released model's preprocessing
    assert nasty["adversary"]["accuracy"] == card["accuracy"] and nasty["adversary"]["sha256"] == card["sha256"]
    assert f"normal small-cnn {card['accuracy']:.2f}%" in outputs["audit"]
    assert Path("logits.png").exists()
    # the same weights without their preprocessing: a warning, and a much lower accuracy
    code, out = run("import", "--weights", "my.pt", "--arch", "small-cnn", "--dataset", "digits", "--out", "runs/wrong")
    assert code == 0 and "warning: --weights my.pt does not record the preprocessing" in out, out
    assert json.loads(Path("runs/wrong/card.json").read_text())["accuracy"] < card["accuracy"] - 10
    # ... which --expect-accuracy turns into a stop that names the cause
    code, out = run("import", "--weights", "my.pt", "--arch", "small-cnn", "--dataset", "digits", "--out", "runs/w2",
                    "--expect-accuracy", card["accuracy"])
    assert code == 1 and "far below" in out and "preprocessing" in out and "--mean/--std" in out
    assert not Path("runs/w2").exists()
    # bare weights work in every command, described by the same options
    code, out = run("plot", "logits", "--teacher", "runs/mine-nasty", "--reference", "my.pt", "--arch", "small-cnn",
                    "--out", "bare.png")
    assert code == 0 and "warning" not in out, out  # the bare reference takes the teacher's recorded preprocessing


def test_audit_warns_about_a_reference_that_is_not_the_adversary(own, teachers, monkeypatch):
    monkeypatch.chdir(own)
    quick = ["--attacks", "kd", "--seeds", "1", "--epochs", "1", "--students", "mlp", "--no-plots", "--device", "cpu"]
    nasty = teachers["root"] / "nasty"
    code, out = run("audit", "--teacher", nasty, "--reference", nasty, "--out", "a1", *quick)
    assert code == 0 and "warning: --reference" in out and "itself a hardened (nasty) teacher" in out, out
    code, out = run("audit", "--teacher", nasty, "--reference", teachers["root"] / "normal", "--out", "a2", *quick)
    assert code == 0 and "warning" not in out, out
    # another model: imported from my.pt, not what the digits nasty teacher was hardened against
    code, out = run("audit", "--teacher", nasty, "--reference", "runs/mine", "--out", "a3", *quick)
    assert code == 1 and "expect different preprocessing" in out, out
    names = "zero,one,two,three,four,five,six,seven,eight,nine"
    code, out = run("import", "--weights", "my.pt", "--arch", "small-cnn", "--dataset", "digits", "--out", "other",
                    "--expect-accuracy", "0", "--classes", names)
    assert code == 0 and json.loads(Path("other/card.json").read_text())["classes"] == names.split(","), out
    code, out = run("audit", "--teacher", nasty, "--reference", "other", "--out", "a4", *quick)
    assert code == 0 and "is not the adversary the teacher was hardened against" in out, out
    assert len([line for line in out.splitlines() if line.startswith("warning")]) == 1


def test_python_takes_modules_and_a_dataset_object(own, tmp_path):
    from attacks.audit import audit
    from nasty.data import load_dataset
    from nasty.models import create_model
    from nasty.runs import harden

    model = create_model("small-cnn", num_classes=10, in_chans=1)
    model.load_state_dict(torch.load(own / "my.pt", weights_only=True))
    data = load_dataset("digits")
    with pytest.raises(NastyError, match="does not record its architecture; pass --arch"):
        harden(teacher=model, data=data, omega=0.05, out=tmp_path / "x")
    with pytest.raises(NastyError, match="far below the 95.00% expected; the likely cause is preprocessing"):
        harden(teacher=model, arch="small-cnn", data=data, mean=0.5, std=0.01, expect_accuracy=95, omega=0.05,
               out=tmp_path / "x")  # the wrong preprocessing is seen before training
    assert not (tmp_path / "x").exists()
    card = harden(teacher=model, arch="small-cnn", data=data, mean=0, std=1, omega=0.05, epochs=2, quiet=True,
                  collapse_margin=0,  # two epochs: not a run the collapse guard is for
                  device="cpu", out=tmp_path / "n")
    assert card["normalization"] == {"mean": [0.0], "std": [1.0]} and card["adversary"]["accuracy"] > 90
    assert card["adversary"]["source"] == f"<{type(model).__name__} module>"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NastyWarning)  # the same module as reference: no warning
        report = audit(teacher=tmp_path / "n", reference=model, arch="small-cnn", data=data, attacks=["kd"], seeds=[0],
                       epochs=1, students=["mlp"], plots=False, quiet=True, device="cpu", out=tmp_path / "a")
    assert report["teachers"]["normal"]["accuracy"] == card["adversary"]["accuracy"]
    other = create_model("small-cnn", num_classes=10, in_chans=1)
    with pytest.warns(NastyWarning, match="not the adversary"):
        audit(teacher=tmp_path / "n", reference=other, arch="small-cnn", data=data, attacks=["kd"], seeds=[0], epochs=1,
              students=["mlp"], plots=False, quiet=True, device="cpu", out=tmp_path / "b")
