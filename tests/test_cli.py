import ast
import io
import json
import re
import tokenize
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nasty.app.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_train_then_harden_with_the_cli(tmp_path):
    code, out = run("train", "--epochs", 3, "--out", tmp_path / "n", "--device", "cpu")
    assert code == 0, out
    assert "normal teacher small-cnn on digits: test accuracy" in out
    code, out = run("harden", "--teacher", tmp_path / "n", "--epochs", 3, "--omega", 0.04, "--out", tmp_path / "x")
    assert code == 0, out
    card = json.loads((tmp_path / "x" / "card.json").read_text())
    assert card["kind"] == "nasty" and card["omega"] == 0.04 and card["tau"] == 4.0 and card["epochs"] == 3
    assert card["dataset"] == "digits" and card["adversary"]["arch"] == "small-cnn" and card["kl_to_adversary"] > 0
    assert f"cost {round(card['teacher_cost'], 2) + 0.0:+.2f} points" in out
    normal = json.loads((tmp_path / "n" / "card.json").read_text())
    assert card["adversary"]["sha256"] == normal["sha256"] and card["adversary"]["accuracy"] == normal["accuracy"]


def test_quiet_prints_nothing_and_resume_continues(tmp_path):
    code, out = run("train", "--epochs", 2, "--arch", "mlp", "--out", tmp_path, "--quiet")
    assert code == 0 and out == ""
    code, out = run("train", "--epochs", 2, "--arch", "mlp", "--out", tmp_path)
    assert code == 1 and "already holds a run" in out and "--resume" in out
    code, out = run("train", "--epochs", 2, "--arch", "mlp", "--out", tmp_path, "--resume")
    assert code == 0 and "after 2 epochs" in out
    code, out = run("train", "--epochs", 3, "--arch", "mlp", "--out", tmp_path, "--resume")
    assert code == 1 and "epochs=2, not 3" in out
    code, out = run("train", "--epochs", 1, "--arch", "mlp", "--out", tmp_path, "--force", "-q")
    assert code == 0 and json.loads((tmp_path / "card.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("args, code, words", [
    (["train", "--dataset", "imagenet99"], 2, "imagenet99"),
    (["train", "--epochs", "0"], 2, "--epochs"),
    (["train", "--train-fraction", "1.5"], 2, "--train-fraction"),
    (["train", "--lr", "-1"], 2, "--lr"),
    (["train", "--arch", "resnet1000", "--epochs", "1"], 1, "unknown architecture 'resnet1000'"),
    (["train", "--device", "cuda:7", "--epochs", "1"], 1, "--device"),
    (["train", "--dataset", "cifar10", "--data-root", "{tmp}"], 1, "cifar-10-batches-py"),
    (["harden", "--teacher", "{tmp}/nope"], 1, "no such file"),
    (["harden", "--teacher", "{tmp}", "--omega", "-0.1"], 2, "--omega"),
    (["harden", "--teacher", "{tmp}", "--tau", "0"], 2, "--tau"),
    (["harden", "--teacher", "{tmp}", "--init", "random"], 2, "--init"),
    (["harden"], 2, "--teacher"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, code, words):
    got, out = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert got == code, out
    assert words in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.startswith("Error")]) == 1


def _library_strings():
    """Every string literal of the library (nasty/ and attacks/, not the CLI), docstrings left out."""
    root = Path(__file__).resolve().parent.parent
    for path in sorted([*root.glob("nasty/**/*.py"), *root.glob("attacks/**/*.py")]):
        if path.relative_to(root).parts[:2] == ("nasty", "app"):  # the app's own modules (nasty/app/: the CLI, its errors, the demo) know flags
            continue
        src = path.read_text()
        docs = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docs.update(range(first.lineno, first.end_lineno + 1))
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.STRING and tok.start[0] not in docs:
                yield f"{path.relative_to(root)}:{tok.start[0]}", tok.string


def _options():
    names = set()
    for command in main.commands.values():
        names.update(p.name for p in command.params if isinstance(p, click.Option))
    return names


def test_library_messages_name_python_keywords_and_the_cli_shows_flags(tmp_path):
    flags = [(where, s) for where, s in _library_strings()
             if re.search(r"(?<![\w/-])--[a-z{]", s) and "omega_sweep.py --json" not in s]
    assert flags == []  # the library speaks in keywords (`data_root`); only the CLI knows flags
    named = {(m, where) for where, s in _library_strings() for m in re.findall(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)", s)}
    commands = set(main.commands)
    assert {(m, where) for m, where in named if m not in _options() and m not in commands} == set()
    assert {m for m, _ in named} >= {"out", "resume", "force", "data_root", "device", "omega", "max_cost"}
    # the CLI shows each as the running command's flag ...
    code, out = run("harden", "--teacher", tmp_path, "--omega", 0.1, "--max-cost", 1, "--out", tmp_path / "x")
    assert code == 1 and "give either --omega (a fixed strength) or --max-cost" in out and "`" not in out
    code, out = run("train", "--dataset", "cifar10", "--epochs", 1)
    assert code == 1 and "needs --data-root DIR" in out and "--download" in out
    # ... and a warning too
    import torch

    from nasty.models import create_model

    torch.save(create_model("tiny-cnn", num_classes=10, in_chans=1).state_dict(), tmp_path / "w.pt")
    code, out = run("import", "--weights", tmp_path / "w.pt", "--arch", "tiny-cnn", "--dataset", "digits",
                    "--expect-accuracy", 0, "--out", tmp_path / "i")
    assert code == 0, out
    assert "warning: --weights" in out and "state it with --mean/--std or --normalization" in out
    assert "`" not in out


def test_models_lists_the_zoo():
    code, out = run("models")
    assert code == 0 and "resnet18" in out and "tv:<name>" in out
    code, out = run("models", "--json")
    assert "small-cnn" in json.loads(out)


def test_console_script_and_module_entry_points(tmp_path):
    import shutil
    import subprocess
    import sys

    exe = shutil.which("nasty") or pytest.skip("the nasty console script is not on PATH (pip install -e .)")
    done = subprocess.run([exe, "train", "--epochs", "2", "--out", str(tmp_path / "n"), "-q"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    done = subprocess.run([sys.executable, "-m", "nasty", "harden", "--teacher", str(tmp_path / "n"), "--epochs", "2",
                           "--max-trials", "1", "--max-cost", "5", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 0 and "nasty teacher small-cnn on digits" in done.stdout, done.stderr
    assert "chose omega 0.05 (tau 4) for a budget of 5 points" in done.stdout  # the search's one line
    assert done.stderr == ""  # no progress bar noise when not on a terminal


def test_harden_a_plain_state_dict_with_init_teacher(tmp_path):
    import torch

    from nasty.checkpoint import load_model

    code, out = run("train", "--epochs", 3, "--out", tmp_path / "n", "-q")
    assert code == 0, out
    model, card = load_model(tmp_path / "n")
    torch.save(model.state_dict(), tmp_path / "released.pth")  # what an owner might have: weights only
    code, out = run("harden", "--teacher", tmp_path / "released.pth", "--epochs", 1, "--out", tmp_path / "x")
    assert code == 1 and "--arch" in out  # a bare state dict does not say what it is
    code, out = run("harden", "--teacher", tmp_path / "released.pth", "--arch", "small-cnn", "--dataset", "digits",
                    "--init", "teacher", "--omega", 0, "--lr", 1e-4, "--epochs", 1, "--out", tmp_path / "x")
    assert code == 0, out
    hardened = json.loads((tmp_path / "x" / "card.json").read_text())
    assert hardened["init"] == "teacher" and abs(hardened["accuracy"] - card["accuracy"]) <= 1.0


def test_harden_resume_refuses_another_teacher(tmp_path):
    assert run("train", "--epochs", 1, "--out", tmp_path / "a", "-q")[0] == 0
    assert run("train", "--epochs", 1, "--seed", 1, "--out", tmp_path / "b", "-q")[0] == 0
    assert run("harden", "--teacher", tmp_path / "a", "--epochs", 2, "--out", tmp_path / "x", "-q")[0] == 0
    code, out = run("harden", "--teacher", tmp_path / "b", "--epochs", 2, "--out", tmp_path / "x", "--resume")
    assert code == 1 and "adversary.sha256" in out
    code, out = run("harden", "--teacher", tmp_path / "a", "--epochs", 2, "--out", tmp_path / "x", "--resume")
    assert code == 0 and "after" not in out and "nasty teacher" in out


def test_the_collapse_guard_judges_hardening_only_gives_advice_and_can_be_turned_off(tmp_path):
    code, out = run("train", "--arch", "tiny-cnn", "--epochs", 3, "--out", tmp_path / "n", "-q")
    assert code == 0, out
    # plain training (omega 0) that is still at chance level at epoch 2 is not stopped
    code, out = run("harden", "--teacher", tmp_path / "n", "--omega", 0, "--lr", 1e-7, "--epochs", 3, "--out",
                    tmp_path / "plain", "-q")
    assert code == 0, out
    # a real collapse is stopped, with advice that can be followed; --collapse-margin 0 turns the guard off
    code, out = run("harden", "--teacher", tmp_path / "n", "--omega", 5, "--epochs", 4, "--out", tmp_path / "x", "-q")
    assert code == 1 and "collapsed at epoch" in out and "smaller --omega than 5" in out and "--collapse-margin" in out
    code, out = run("harden", "--teacher", tmp_path / "n", "--omega", 5, "--epochs", 4, "--collapse-margin", 0,
                    "--out", tmp_path / "y", "-q")
    assert code == 0, out
    # a run stopped before its first checkpoint leaves no empty --out behind
    code, out = run("harden", "--teacher", tmp_path / "n", "--omega", 1e30, "--epochs", 3, "--out", tmp_path / "z", "-q")
    assert code == 1 and "diverged at epoch 1" in out and not (tmp_path / "z").exists()
