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

from nasty.app.cli import main
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
    assert f"reference small-cnn {card['accuracy']:.2f}% (defence none)" in outputs["audit"]
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
    with pytest.raises(NastyError, match="does not record its architecture; pass `arch`"):
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


def test_a_model_with_its_own_input_size_and_channels_through_a_model_card(tmp_path):
    """A 3-channel 16x16 model of digits (grey 8x8): a TOML model card states it once; import, harden,
    audit and plot adapt the data to it; the hardened run records it; a bad card is one line."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from nasty.models import create_model

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
    y = torch.tensor(digits.target)
    train, _ = train_test_split(list(range(len(y))), test_size=0.25, stratify=digits.target, random_state=0)
    train = torch.tensor(train)
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_chans=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(8):
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), tmp_path / "my3.pt")
    card = tmp_path / "my3.toml"
    card.write_text('arch = "small-cnn"\ndataset = "digits"\nmean = 0\nstd = 1\ninput_size = 16\nchannels = 3\n')

    code, out = run("import", "--weights", tmp_path / "my3.pt", "--model-card", card, "--out", tmp_path / "mine",
                    "--device", "cpu")
    assert code == 0, out
    imported = json.loads((tmp_path / "mine" / "card.json").read_text())
    assert imported["input"] == {"size": 16, "channels": 3} and imported["input_shape"] == [3, 16, 16]
    assert imported["accuracy"] > 90, imported["accuracy"]
    code, out = run("harden", "--teacher", tmp_path / "mine", "--omega", "0.05", "--epochs", "2", "--device", "cpu",
                    "--collapse-margin", "0", "-q", "--out", tmp_path / "nasty3")  # 2 epochs: near chance, by design
    assert code == 0, out
    assert json.loads((tmp_path / "nasty3" / "card.json").read_text())["input"] == {"size": 16, "channels": 3}
    code, out = run("audit", "--teacher", tmp_path / "nasty3", "--reference", tmp_path / "mine", "--attacks", "kd",
                    "--seeds", "0,", "--epochs", "1", "--no-plots", "--device", "cpu", "-q", "--out", tmp_path / "a3")
    assert code == 0 and "warning" not in out, out
    code, out = run("plot", "logits", "--teacher", tmp_path / "nasty3", "--reference", tmp_path / "mine",
                    "--out", tmp_path / "l3.png")
    assert code == 0, out
    # the command line wins over the card; what it contradicts in a run is refused in one line
    code, out = run("plot", "logits", "--teacher", tmp_path / "nasty3", "--input-size", "8", "--out", tmp_path / "x.png")
    assert code == 1 and "input" in out and len(out.strip().splitlines()) == 1, out
    # bare weights without the card: the architecture does not fit 1-channel digits, one line
    code, out = run("import", "--weights", tmp_path / "my3.pt", "--arch", "small-cnn", "--dataset", "digits",
                    "--mean", "0", "--std", "1", "--out", tmp_path / "no-card", "--device", "cpu")
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    for text, words in [('arch = "small-cnn"\ncolour = 3\n', "colour"), ("channels = 2\n", "channels"),
                        ("input_size = [\n", "TOML"), ("input_size = 4\n", "input_size")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        code, out = run("import", "--weights", tmp_path / "my3.pt", "--model-card", bad, "--out", tmp_path / "b")
        assert code == 1 and words in out and len(out.strip().splitlines()) == 1, (text, out)


def test_adapted_data_resizes_repeats_and_reverses_channels():
    from nasty.data import TensorData, load_dataset

    grey = load_dataset("digits")
    rgb = grey.adapted({"size": 16, "channels": 3})
    assert rgb.input_shape == (3, 16, 16) and len(rgb.mean) == 3 and rgb.input == {"size": 16, "channels": 3}
    assert torch.equal(rgb.train_x[:, 0], rgb.train_x[:, 2]) and rgb.describe()["input"] == rgb.input
    assert grey.adapted(None) is grey and rgb.adapted({"size": 16, "channels": 3}) is rgb
    colour = TensorData(name="c", train_x=torch.arange(3 * 64, dtype=torch.uint8).view(1, 3, 8, 8).repeat(2, 1, 1, 1),
                        train_y=torch.tensor([0, 1]), test_x=torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
                        test_y=torch.tensor([0]), classes=("a", "b"), mean=(0.1, 0.2, 0.3), std=(0.1, 0.1, 0.1))
    bgr = colour.adapted({"channel_order": "bgr"})
    assert torch.equal(bgr.train_x, colour.train_x.flip(1)) and bgr.mean[::-1] == pytest.approx(colour.adapted(
        {"channels": 3, "channel_order": "rgb"}).mean, abs=1e-6)
    assert colour.adapted({"channels": 1}).input_shape == (1, 8, 8)
    with pytest.raises(NastyError, match="already adapted"):
        rgb.adapted({"size": 32})


def test_open_models_reads_checks_then_loads_and_builds(tmp_path):
    from nasty.checkpoint import save_release
    from nasty.data import load_dataset
    from nasty.defences import Defended
    from nasty.models import create_model
    from nasty.released import open_models

    data = load_dataset("digits")
    net = create_model("tiny-cnn", num_classes=10, in_chans=1)
    save_release(tmp_path / "top2", net, {"arch": "tiny-cnn", **data.describe(),
                                          "output_transform": {"name": "topk", "k": 2}})
    seen = []

    def stop(items):  # the caller's checks see every card, before any data is loaded
        seen.extend(items)
        raise NastyError("stopped by the caller")
    with pytest.raises(NastyError, match="stopped by the caller"):
        open_models({"teacher": tmp_path / "top2", "reference": net}, arch="tiny-cnn", dataset="cifar10",
                    check=stop)  # cifar10 without a `data_root` would fail to load
    # the names as messages give them
    assert [(o, c["arch"]) for o, _, c in seen] == [("`teacher`", "tiny-cnn"), ("`reference`", "tiny-cnn")]
    with pytest.raises(NastyError, match="`reference` <TinyCNN module> does not record its architecture"):
        open_models([("`teacher`", tmp_path / "top2"), ("`reference`", net)], data=data)  # quoted names kept
    (teacher, reference), got = open_models([("teacher", tmp_path / "top2"), ("reference", net)],  # or pairs
                                            arch="tiny-cnn", data=data, served=True, train_fraction=0.5)
    assert isinstance(teacher.model, Defended) and not isinstance(reference.model, Defended)
    assert (teacher.name, teacher.option, reference.name) == ("teacher", "`teacher`", "reference")
    assert not teacher.model.training and teacher.card["output_transform"] == {"name": "topk", "k": 2}
    assert len(got.train_y) < len(data.train_y) and got.mean == data.mean
    [bare], _ = open_models({"teacher": tmp_path / "top2"}, data=data)  # not served: the network itself
    assert not isinstance(bare.model, Defended)
    x, _ = next(data.batches("test", batch_size=4))
    torch.testing.assert_close(bare.model(x), net.eval()(x))


def test_every_command_takes_what_open_models_takes_about_the_models_brought(tmp_path):
    """``Brought`` is the one list of the keywords that describe a model you bring and its data: it
    names open_models' own, and each command that loads a model passes them on as they are."""
    import inspect

    from attacks.audit import audit
    from attacks.compare import compare
    from nasty.diagnostics import render
    from nasty.released import Brought, open_models
    from nasty.runs import harden, import_weights

    opened = {n for n, p in inspect.signature(open_models).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(Brought.__annotations__) == opened - {"served", "check"}
    for command in (harden, import_weights, audit, compare, render):
        params = inspect.signature(command).parameters
        assert params["brought"].kind is inspect.Parameter.VAR_KEYWORD, command.__name__
        assert not set(params) & set(Brought.__annotations__), command.__name__  # each said in one place
    with pytest.raises(TypeError, match="normalisation"):  # a misspelt keyword is not dropped
        import_weights(weights=tmp_path / "none.pt", normalisation="imagenet", out=tmp_path / "x")


def test_model_cards_read_toml_without_tomllib(monkeypatch, tmp_path):
    """Python 3.10 has no tomllib: the card is read with tomli (a dependency there), errors included."""
    import sys
    import types

    try:
        import tomllib
    except ModuleNotFoundError:  # on 3.10 itself: the real tomli stands behind the fake one
        import tomli as tomllib

    from nasty.released import read_model_card

    calls = []
    tomli = types.ModuleType("tomli")
    tomli.loads = lambda text: calls.append(text) or tomllib.loads(text)
    tomli.TOMLDecodeError = tomllib.TOMLDecodeError
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib raises ModuleNotFoundError, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    card = tmp_path / "my.toml"
    card.write_text('arch = "small-cnn"\ndataset = "digits"\nmean = 0\nstd = 1\n')
    assert read_model_card(card) == {"arch": "small-cnn", "dataset": "digits", "mean": 0, "std": 1}
    assert len(calls) == 1
    card.write_text("input_size = [\n")
    with pytest.raises(NastyError, match="not valid TOML"):
        read_model_card(card)
