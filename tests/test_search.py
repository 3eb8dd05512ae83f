"""The budgeted search of `nasty harden` (no --omega): validation only, within the budget, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main
from nasty.search import Budget, next_omega, search_strength
from nasty.trainer import TrainConfig

# a small, fast case: tiny-cnn teachers, 3 epochs, an mlp probe
SMALL = ["--arch", "tiny-cnn", "--epochs", "3", "--device", "cpu", "--quiet"]
SEARCH = ["--max-trials", "2", "--probe", "mlp"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    code = CliRunner().invoke(main, ["train", *SMALL, "--out", str(root / "normal")])
    assert code.exit_code == 0, code.output
    return root / "normal"


def test_validation_split_is_stratified_seeded_and_apart_from_the_test_set(digits):
    fit, val = digits.split_validation(0.2, seed=0)
    n = len(digits.train_y)
    assert len(fit.train_y) + len(val.test_y) == n and fit.validation == {"fraction": 0.2, "seed": 0,
                                                                          "size": len(val.test_y)}
    assert torch.equal(val.train_x, fit.train_x)  # both train on what the split leaves
    assert torch.equal(fit.test_x, digits.test_x) and torch.equal(fit.test_y, digits.test_y)  # the real test set
    rows = lambda x, y: {bytes(a.numpy().tobytes()) + bytes([int(b)]) for a, b in zip(x, y)}  # noqa: E731
    train_rows = rows(digits.train_x, digits.train_y)
    assert rows(val.test_x, val.test_y) <= train_rows  # validation images come from the training set
    assert rows(val.test_x, val.test_y) | rows(fit.train_x, fit.train_y) == train_rows
    assert not rows(val.test_x, val.test_y) & rows(fit.train_x, fit.train_y)
    # stratified: every class in proportion (within one image)
    for c in range(10):
        share = int((digits.train_y == c).sum()) * 0.2
        assert abs(int((val.test_y == c).sum()) - share) <= 1
    again, other = digits.split_validation(0.2, seed=0)[1], digits.split_validation(0.2, seed=1)[1]
    assert torch.equal(again.test_y, val.test_y) and torch.equal(again.test_x, val.test_x)
    assert not torch.equal(other.test_x, val.test_x)
    assert fit.describe()["validation"]["size"] == len(val.test_y)


def test_the_ladder_doubles_halves_then_bisects():
    t = lambda omega, ok: {"omega": omega, "affordable": ok}  # noqa: E731
    assert next_omega([], 0.05) == 0.05
    assert next_omega([t(0.05, True)], 0.05) == 0.1
    assert next_omega([t(0.05, False)], 0.05) == 0.025
    assert next_omega([t(0.05, True), t(0.1, False)], 0.05) == pytest.approx(0.0707, abs=1e-4)
    assert next_omega([t(0.05, True), t(0.06, False)], 0.05) is None  # bracket narrower than 1.25x


def _search(adversary, data, out, max_cost=1.0):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=0)
    return search_strength(adversary, arch="tiny-cnn", data=data, config=cfg, tau=4.0, omega0=0.05,
                           budget=Budget(max_cost=max_cost, max_trials=2, probe="mlp"), students=("mlp",),
                           out=out, device="cpu")


def test_the_search_never_reads_the_test_set_and_keeps_the_budget(digits, released, tmp_path):
    adversary, _ = ckpt.load_model(released)
    trace = _search(adversary, digits, tmp_path / "a")
    # the same search with the test set replaced by noise finds exactly the same
    g = torch.Generator().manual_seed(0)
    noisy = replace(digits, test_x=torch.randint(0, 256, digits.test_x.shape, dtype=torch.uint8, generator=g),
                    test_y=torch.randint(0, 10, digits.test_y.shape, generator=g), _device_cache={})
    other = _search(adversary, noisy, tmp_path / "b")
    strip = lambda tr: [{k: v for k, v in t.items() if k != "seconds"} for t in tr["trials"]]  # noqa: E731
    assert strip(trace) == strip(other) and trace["baseline"]["val_accuracy"] == other["baseline"]["val_accuracy"]
    # every trial is judged against the budget; the choice is the most damaging affordable one
    assert len(trace["trials"]) == 2
    for row in trace["trials"]:
        assert row["affordable"] == (row["val_cost"] is not None and row["val_cost"] <= 1.0)
        assert ("damage" in row) == row["affordable"]
    affordable = [t for t in trace["trials"] if t["affordable"]]
    if affordable:
        best = max(affordable, key=lambda t: t["damage"])
        assert trace["chosen"] == best["trial"] and trace["omega"] == best["omega"]
    else:
        assert trace["chosen"] is None
    assert trace["validation"] == {"fraction": 0.2, "seed": 0, "size": 270}


def test_an_unreachable_budget_is_one_line_and_keeps_the_best_run(released, tmp_path, monkeypatch):
    import nasty.runs

    def nothing_fits(adversary, **kw):  # what a search returns when every trial costs too much
        return {"max_cost": 0.5, "omega": None, "chosen": None, "seconds": 1.0, "baseline": {"val_accuracy": 90.0},
                "trials": [{"trial": 0, "omega": 0.05, "val_cost": 2.5, "affordable": False},
                           {"trial": 1, "omega": 0.025, "val_cost": 1.5, "affordable": False}]}

    monkeypatch.setattr(nasty.runs, "search_strength", nothing_fits)
    out = tmp_path / "x"
    result = CliRunner().invoke(main, ["harden", "--teacher", str(released), *SMALL, "--max-cost", "0.5",
                                       "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "budget of 0.5 points" in lines[0] and "omega 0.025" in lines[0], result.output
    assert "+1.50 points" in lines[0] and "Traceback" not in result.output
    card = ckpt.read_card(out)  # the cheapest strength was trained and kept
    assert card["omega"] == 0.025 and card["status"] == "complete" and card["search"]["chosen"] is None


def test_omega_and_max_cost_together_are_refused(released, tmp_path):
    result = CliRunner().invoke(main, ["harden", "--teacher", str(released), "--omega", "0.1", "--max-cost", "1",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "either --omega" in result.output


def _harden(out, *extra, background=False):
    cmd = [sys.executable, "-m", "nasty", "harden", "--teacher", str(out.parent / "normal"), *SMALL, *SEARCH,
           "--out", str(out), *extra]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow
def test_a_search_killed_in_the_middle_resumes_to_the_same_teacher(released, tmp_path):
    import shutil

    shutil.copytree(released, tmp_path / "normal")
    done = _harden(tmp_path / "ref")
    assert done.returncode == 0, done.stderr
    ref = ckpt.read_card(tmp_path / "ref")
    # kill the same search inside its second trial, then go on with --resume
    p = _harden(tmp_path / "x", background=True)
    while not (tmp_path / "x" / "search" / "trial-1" / ckpt.METRICS).exists():
        assert p.poll() is None, "the search ended before it could be killed"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    refused = _harden(tmp_path / "x")
    assert refused.returncode == 1 and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    again = _harden(tmp_path / "x", "--resume")
    assert again.returncode == 0, again.stderr
    card = ckpt.read_card(tmp_path / "x")
    strip = lambda c: [{k: v for k, v in t.items() if k != "seconds"} for t in c["search"]["trials"]]  # noqa: E731
    assert strip(card) == strip(ref) and card["omega"] == ref["omega"]
    from safetensors.torch import load_file

    mine, theirs = load_file(tmp_path / "x" / ckpt.WEIGHTS), load_file(tmp_path / "ref" / ckpt.WEIGHTS)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert json.loads((tmp_path / "x" / "search" / "trial-1.json").read_text())["omega"] == ref["search"]["trials"][1]["omega"]
