"""The recalibrate attack: a map of the teacher's logits fitted on the thief's held-out images, then KD."""

import json

import pytest
import torch

from attacks import create_attack
from attacks.audit import audit
from attacks.recalibrate import Recalibrate, fit_recalibration, nll_of
from nasty.checkpoint import load_model
from nasty.errors import NastyError


def _distorted(n=600, c=5, seed=0):
    """Logits whose argmax is right 80% of the time, then squashed and shifted per class (a served bend)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    clean = torch.randn(n, c, generator=g) + 3.0 * torch.nn.functional.one_hot(y, c)
    bent = 0.1 * clean + torch.linspace(-2.0, 2.0, c)
    return clean, bent, y


def test_the_fit_reads_a_bent_teacher_back_and_is_deterministic():
    clean, bent, y = _distorted()
    for matrix in (False, True):
        w, b = fit_recalibration(bent, y, matrix=matrix)
        assert nll_of(bent @ w.t() + b, y) < 0.8 * nll_of(bent, y)
        assert nll_of(bent @ w.t() + b, y) < nll_of(clean, y) + 0.05  # about as good as the unbent logits
        w2, b2 = fit_recalibration(bent, y, matrix=matrix)
        assert torch.equal(w, w2) and torch.equal(b, b2)
    w, _ = fit_recalibration(bent, y)
    assert torch.equal(w, torch.diag(torch.diagonal(w)))  # vector scaling: a diagonal map
    # cut-off classes (a top-1 server: -1000 or -inf) still fit to finite numbers
    cut = bent.clone()
    cut[cut < cut.max(1, keepdim=True).values] = float("-inf")
    w, b = fit_recalibration(cut, y)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()


@pytest.mark.parametrize("options, said", [
    ({"alpha": 1.5}, "alpha must be a number in \\[0, 1\\]"), ({"tau": 0}, "tau must be a finite number > 0"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"matrix": 2}, "matrix must be 1 or 0"), ({"l2": -1}, "l2 must be a finite number >= 0"), ({"steps": 0}, "steps must be a whole"),
    ({"steps": 2.5}, "steps must be a whole"), ({"tau": float("nan")}, "tau must be a finite number"),
])
def test_its_options_are_checked(options, said):
    with pytest.raises(NastyError, match=f"recalibrate.{said}"):
        create_attack("recalibrate", **options)


def test_the_map_depends_on_the_seed_alone(teachers, digits):
    nasty, _ = load_model(teachers["root"] / "nasty")
    attack = Recalibrate()
    a, b, c = (attack.setup(nasty, digits, seed=s, batch_size=64, epochs=1, device="cpu") for s in (0, 0, 1))
    assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])
    assert not torch.equal(a["weight"], c["weight"])  # another held-out split
    assert a["nll_after"] <= a["nll_before"] and a["held_out"] == len(digits.split_validation(0.2, seed=0)[1].test_y)
    assert attack.setup(None, digits, seed=0, batch_size=64, epochs=1, device="cpu") is None


def test_it_runs_in_an_audit(teachers, tmp_path):
    report = audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=tmp_path,
                   attacks=["recalibrate"], seeds=(0,), epochs=1, students=["mlp"], device="cpu", quiet=True,
                   plots=False, attack_options={"recalibrate": {"matrix": 1}})
    row = next(s for s in report["summary"] if s["attack"] == "recalibrate")
    assert row["acc_from_nasty"]["mean"] > 30.0 and row["acc_from_normal"]["mean"] > 30.0
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]["recalibrate-seed0"]
    for side in ("normal", "nasty"):
        assert notes[side]["nll_after"] <= notes[side]["nll_before"] + 1e-6
    assert report["settings"]["attacks"]["recalibrate"]["matrix"] is True
    assert [b["student"] for b in report["beyond_labels"]] == ["mlp"]  # a thief of the outputs (labels_only False)
