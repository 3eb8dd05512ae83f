"""--compile (torch.compile of the training forward) on the CPU: same run, same accuracy."""

import pytest
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    args = ["train", "--arch", "tiny-cnn", "--epochs", "3", "--device", "cpu", "--quiet"]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
    eager, compiled = ckpt.read_card(tmp_path / "eager"), ckpt.read_card(tmp_path / "compiled")
    assert abs(eager["accuracy"] - compiled["accuracy"]) <= 1.0, (eager["accuracy"], compiled["accuracy"])
