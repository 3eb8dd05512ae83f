"""Flips as a data option recorded in the card, and a user's image folder's recipe by its classes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nasty.app.cli import main
from nasty.data import load_dataset
from nasty.errors import NastyError
from nasty.recipes import RECIPES, recipe_for
from nasty.released import open_models
from nasty.runs import harden, import_weights, train


def _folder(root, classes: int, side: int = 12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for c in range(classes):
            (root / split / f"c{c:03d}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), mode="L").save(
                    root / split / f"c{c:03d}" / f"{i}.png")
    return root


def test_flip_overrides_the_datasets_choice(digits):
    assert not digits.flip and digits.describe()["flip"] is False
    on = load_dataset("digits", flip=True)
    assert on.flip and on.describe()["flip"] is True and on.flip_choice() == {"flip": True}
    assert digits.flip_choice() == {}  # the dataset's own choice: nothing a resumed run must repeat


def test_a_run_without_flips_is_hardened_and_audited_without(tmp_path):
    card = train(dataset="digits", epochs=1, flip=True, out=tmp_path / "t", quiet=True, device="cpu")
    assert card["flip"] is True and json.loads((tmp_path / "t" / "card.json").read_text())["flip"] is True
    _, data = open_models({"teacher": tmp_path / "t"})
    assert data.flip  # the card's choice, over the dataset's (no flips for digits)
    _, data = open_models({"teacher": tmp_path / "t"}, flip=False)
    assert not data.flip  # what the caller says wins
    hard = harden(teacher=tmp_path / "t", omega=0.01, epochs=1, out=tmp_path / "h", quiet=True, device="cpu")
    assert hard["flip"] is True
    with pytest.raises(NastyError, match=r"made with flip=True, not given now"):
        train(dataset="digits", epochs=1, out=tmp_path / "t", resume=True, quiet=True, device="cpu")


def test_an_imported_model_records_flips_only_where_stated(tmp_path):
    train(dataset="digits", epochs=1, out=tmp_path / "t", quiet=True, device="cpu")
    weights = tmp_path / "t" / "model.safetensors"
    plain = import_weights(weights=weights, arch="small-cnn", dataset="digits", out=tmp_path / "i", device="cpu")
    stated = import_weights(weights=weights, arch="small-cnn", dataset="digits", flip=True, out=tmp_path / "j",
                            device="cpu")
    assert "flip" not in plain and stated["flip"] is True


def test_cli_no_flip_on_a_folder(tmp_path):
    folder = _folder(tmp_path / "f", classes=3)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--dataset", "imagefolder", "--data-root", str(folder), "--arch", "mlp",
                                  "--epochs", "1", "--batch-size", "4", "--no-flip", "--device", "cpu", "--out",
                                  str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "card.json").read_text())["flip"] is False


def test_a_folders_recipe_follows_the_papers_rule_by_classes(tmp_path):
    from attacks.audit import default_tau

    assert recipe_for("imagefolder", 10) == RECIPES["cifar10"] and recipe_for("imagefolder", 99).tau == 4.0
    assert recipe_for("imagefolder", 100) == RECIPES["imagefolder"] and recipe_for("imagefolder", 200).tau == 20.0
    assert recipe_for("digitpairs", 100) == RECIPES["digitpairs"]  # a named dataset keeps its own
    for n in (10, 100):  # the hardening temperature is the audit's KD thief's
        assert recipe_for("imagefolder", n).tau == default_tau(n, "imagefolder")
    data = load_dataset("imagefolder", root=_folder(tmp_path / "f", classes=3))
    card = train(dataset="imagefolder", data_root=tmp_path / "f", arch="mlp", epochs=1, out=tmp_path / "t",
                 quiet=True, device="cpu")
    assert data.flip and card["flip"] is True and card["batch_size"] == RECIPES["cifar10"].batch_size
    hard = harden(teacher=tmp_path / "t", omega=0.01, epochs=1, batch_size=4, out=tmp_path / "h",
                  data_root=tmp_path / "f", quiet=True, device="cpu", collapse_margin=0)
    assert hard["tau"] == RECIPES["cifar10"].tau == 4.0  # was Tiny-ImageNet's 20 whatever the classes
