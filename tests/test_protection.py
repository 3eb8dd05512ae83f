"""Students at equal steps whatever the share, the 100-class digit pairs, and bench/protection.py."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attacks.audit import audit, schedule_text, student_schedule
from attacks.base import run_students
from attacks.baselines import Scratch
from conftest import bench_script
from nasty.data import load_dataset
from nasty.errors import NastyError
from nasty.trainer import TrainConfig


def test_a_step_budget_sets_the_epochs_and_cuts_the_last_one(digits):
    cfg = TrainConfig(epochs=20, batch_size=64, lr=0.05)
    assert cfg.epoch_steps(1347) == 21 and cfg.total_steps(1347) == 420
    tenth = cfg.for_steps(420, 134)  # 2 steps an epoch: 210 epochs
    assert (tenth.epochs, tenth.total_steps(134)) == (210, 420)
    odd = cfg.for_steps(101, 134)  # 51 epochs, the last one of 1 step
    assert (odd.epochs, odd.total_steps(134)) == (51, 101)
    with pytest.raises(NastyError, match="student_steps"):
        cfg.for_steps(0, 134)


class Counting(Scratch):
    name = "counting"
    seen = 0

    def loss(self, student_logits, teacher_logits, y):
        Counting.seen += 1
        return super().loss(student_logits, teacher_logits, y)


def test_run_students_takes_exactly_the_budgeted_steps(digits):
    small = digits.subset(0.1)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05).for_steps(7, len(small.train_y))  # 2 an epoch: 3.5 epochs
    Counting.seen = 0
    run_students(Counting(), {"scratch": None}, ["mlp"], small, config=cfg, device="cpu")
    assert Counting.seen == 7


def test_the_audit_schedule_is_the_whole_sets_steps_at_any_share(digits):
    full = student_schedule(digits, epochs=20, batch_size=64, lr=0.05)
    for share in (0.1, 0.3, 1.0):
        part = digits.subset(share)
        s = student_schedule(part, epochs=20, batch_size=64, lr=0.05)
        assert s.total_steps(len(part.train_y)) == full.total_steps(len(digits.train_y)) == 420
    assert student_schedule(digits.subset(0.1), epochs=20, batch_size=64, lr=0.05).epochs == 210
    assert student_schedule(digits, epochs=20, batch_size=64, lr=0.05, steps=50).total_steps(1347) == 50
    for bad in (0, -3, 2.5, 10**9):
        with pytest.raises(NastyError, match="student_steps"):
            student_schedule(digits, epochs=20, batch_size=64, lr=0.05, steps=bad)


def test_an_audit_at_a_small_share_trains_the_same_steps_and_records_them(teachers, tmp_path):
    kw = dict(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", attacks=["kd"],
              students=["mlp"], seeds=(0,), epochs=1, device="cpu", quiet=True, plots=False)
    full = audit(out=tmp_path / "full", **kw)
    tenth = audit(out=tmp_path / "tenth", train_fraction=0.1, **kw)
    assert full["settings"]["steps"] == tenth["settings"]["steps"] == 21  # one epoch of all 1,347 images
    assert (tenth["settings"]["student_epochs"], tenth["settings"]["samples"]) == (11, 134)
    cell = json.loads((tmp_path / "tenth" / "cells" / "kd-seed0.json").read_text())
    assert cell["schedule"] == {"steps": 21, "epochs": 11, "samples": 134} and cell["key"]["steps"] == 21
    # at the whole set the key is what it was before the budget: old cells are still used
    assert "steps" not in json.loads((tmp_path / "full" / "cells" / "kd-seed0.json").read_text())["key"]
    forced = audit(out=tmp_path / "steps", student_steps=5, **kw)
    assert forced["settings"]["steps"] == 5 and "5 steps (1 epochs of 1347 images)" in schedule_text(forced["settings"])
    assert schedule_text({"epochs": 20}) == "20 epochs"  # a report from before the budget


def test_digit_pairs_are_100_classes_made_of_the_digits_own_splits(digits):
    pairs = load_dataset("digit-pairs")
    assert pairs.name == "digitpairs" and pairs.num_classes == 100 and pairs.input_shape == (1, 8, 16)
    assert torch.bincount(pairs.train_y, minlength=100).tolist() == [60] * 100
    assert torch.bincount(pairs.test_y, minlength=100).tolist() == [20] * 100
    test_images = {bytes(x.numpy()) for x in digits.test_x}
    train_images = {bytes(x.numpy()) for x in digits.train_x}
    for x, y in zip(pairs.test_x[:200], pairs.test_y[:200]):  # every half is a test digit of the right class
        left, right = bytes(np.ascontiguousarray(x[:, :, :8].numpy())), bytes(np.ascontiguousarray(x[:, :, 8:].numpy()))
        assert left in test_images and right in test_images
    for x in pairs.train_x[:200]:
        assert bytes(np.ascontiguousarray(x[:, :, :8].numpy())) in train_images
    left_digit = digits.test_y[[i for i, x in enumerate(digits.test_x)
                                if torch.equal(x, pairs.test_x[0][:, :, :8])][0]]
    assert int(pairs.test_y[0]) // 10 == int(left_digit)
    assert torch.equal(load_dataset("digit_pairs").train_x, pairs.train_x)  # the draw is fixed


def _halves(images) -> set:
    return {bytes(np.ascontiguousarray(h.numpy())) for x in images for h in (x[:, :, :8], x[:, :, 8:])}


@pytest.mark.parametrize("share", [1.0, 0.1])
def test_a_digit_pairs_validation_split_shows_no_digit_image_of_its_training_pairs(share):
    """Whole folds held out (the harden search's split, and a thief's own split of its share): random
    pairs would show the validation pairs' digit images in training pairs, and score the memory."""
    pairs = load_dataset("digit-pairs").subset(share)
    for seed in (0, 1):
        fit, val = pairs.split_validation(0.2, seed=seed)
        assert val.validation["groups"] == 2 and len(fit.train_y) + len(val.test_y) == len(pairs.train_y)
        assert not _halves(fit.train_x) & _halves(val.test_x)
    ungrouped = dataclasses.replace(pairs, groups=None).split_validation(0.2, seed=0)  # the check can fail
    assert _halves(ungrouped[0].train_x) & _halves(ungrouped[1].test_x)
    with pytest.raises(NastyError, match="holds 0 of them"):
        pairs.split_validation(0.01)


def _report(acc):
    """A report's runs and summary from ``acc[(attack, source)] = [per-seed accuracies]``."""
    from attacks.audit import summarize

    runs = [{"attack": a, "student": "s", "source": src, "seed": i, "accuracy": v}
            for (a, src), vals in acc.items() for i, v in enumerate(vals)]
    attacks = ["kd", "hard-label-sweep"]
    runs = [r for r in runs if r["source"] not in ("scratch", "label-smoothing")] + [
        {**r, "attack": a} for r in runs if r["source"] in ("scratch", "label-smoothing") for a in attacks]
    return {"runs": runs, "summary": summarize(runs, attacks, ["s"])}


def test_value_beyond_labels_is_the_best_thief_minus_the_best_labels_student_per_seed():
    from attacks.summary import value_beyond_labels

    report = _report({("scratch", "scratch"): [60, 62], ("label-smoothing", "label-smoothing"): [61, 65],
                      ("kd", "normal"): [90, 94], ("kd", "nasty"): [50, 56],
                      ("hard-label-sweep", "normal"): [70, 72], ("hard-label-sweep", "nasty"): [70, 72]})
    ref = value_beyond_labels(report, "s", "reference")
    assert (ref["outputs"], ref["labels"], ref["mean"]) == ("kd", "hard-label-sweep", 21.0)
    assert ref["std"] == pytest.approx(1.4142, abs=1e-4)  # per seed 20 and 22
    mine = value_beyond_labels(report, "s", "teacher")
    assert (mine["outputs"], mine["labels"]) == ("kd", "hard-label-sweep") and mine["mean"] == -18.0
    assert mine["std"] == pytest.approx(float(np.std([-20, -16], ddof=1)), abs=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "digits-quick", "--shares", "0.001"], "fewer than its 100 classes"),
    (["--suite", "digits-quick", "--student-steps", "0"], "--student-steps must be >= 1"),
    (["--suite", "digits-quick", "--shares", "x"], "--shares"),
    (["--suite", "digits-quick", "--devices", "cuda:99"], "--devices cuda:99"),  # no such GPU, or none at all
])
def test_bad_benchmark_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    protection = bench_script("protection")
    result = CliRunner().invoke(protection.main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_quick_suite_runs_and_finds_value_in_the_outputs(tmp_path):
    protection = bench_script("protection")
    result = CliRunner().invoke(protection.main, ["--suite", "digits-quick", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "protection.json").read_text())
    assert [r["student"] for r in rows] == ["tiny-cnn"]
    r = rows[0]
    assert {"setting", "dataset", "teacher_arch", "share", "student", "seeds", "reference_adds", "teacher_adds",
            "cost", "worst_attack", "kd_below_scratch"} <= set(r)
    assert r["reference_adds"]["mean"] > 3  # the undefended outputs carry value on digit pairs at 10%
    assert (tmp_path / "protection.md").exists() and (tmp_path / "protection.png").stat().st_size > 0


def test_the_audits_kd_temperature_is_the_recipes_and_the_papers_rule_for_a_folder():
    from attacks.audit import default_tau

    assert default_tau(100, "digitpairs") == 4.0 and default_tau(100, "cifar100") == 20.0
    assert default_tau(10, "cifar10") == 4.0 and default_tau(100, "imagefolder") == 20.0
    assert default_tau(10, "imagefolder") == 4.0 and default_tau(200, "nonesuch") == 20.0


def test_devices_spread_the_audit_and_the_teachers_train_on_the_first(tmp_path, monkeypatch):
    """--devices: the teachers train here on the first device; the audit gets the devices (and no --device)."""
    import attacks.audit
    import nasty.runs

    protection = bench_script("protection")
    calls = {}
    monkeypatch.setattr(nasty.runs, "train", lambda **kw: calls.setdefault("train", kw))
    monkeypatch.setattr(nasty.runs, "harden", lambda **kw: calls.setdefault("harden", kw) and {})
    monkeypatch.setattr(attacks.audit, "audit", lambda **kw: calls.setdefault("audit", kw))
    setting = protection.Setting("digits", "small-cnn", 1.0, ("mlp",), seeds=1)
    protection.run_setting(setting, tmp_path, device="auto", quiet=True, devices=["cpu", "cpu"])
    assert calls["train"]["device"] == calls["harden"]["device"] == "cpu"
    assert calls["audit"]["devices"] == ["cpu", "cpu"] and "device" not in calls["audit"]


def test_the_defences_table_names_valid_transforms_and_refuses_an_unknown_setting(tmp_path):
    from nasty.defences import create_transform

    defences = bench_script("defences")
    assert all(create_transform(t) is not None for t in defences.SERVED.values())
    setting = defences.SUITES["digits-quick"][0]
    row = {"defence": "stingy-top1", "served": "top-1", "student": "tiny-cnn", "accuracy": 98.7, "cost": 0.0,
           "utility": {"nll": 2.5, "ece": 0.01, "top5": 98.7}, "worst_case": {"attack": "kd", "acc_from_teacher": 80.0},
           "teacher_adds": {"mean": -0.5, "std": 1.25, "outputs": "kd", "labels": "hard-label-sweep"}}
    line = defences.format_markdown([row], setting).splitlines()[-1]
    assert "| stingy-top1 | top-1 | tiny-cnn | 98.70 | +0.00 | 2.500 | 0.010 | 98.70 | -0.50 ± 1.25 (kd vs" in line
    result = CliRunner().invoke(defences.main, ["--setting", "nope", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "unknown suite 'nope'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_defences_subset_makes_only_what_it_audits(tmp_path, monkeypatch):
    """`--only` hardens or serves only the defences it names (and what they are made from)."""
    import nasty.runs

    defences = bench_script("defences")
    made = []
    monkeypatch.setattr(nasty.runs, "train", lambda **kw: made.append(("train", kw["out"].name)))
    monkeypatch.setattr(nasty.runs, "harden", lambda **kw: made.append(("harden", kw["out"].name)))
    monkeypatch.setattr(nasty.runs, "defend", lambda **kw: made.append(("defend", kw["out"].name)))
    setting = defences.SUITES["digits-quick"][0]
    _, got = defences.teachers(setting, tmp_path, device="cpu", quiet=True, only=["none", "round1", "nasty+top2"])
    assert list(got) == ["none", "round1", "nasty+top2"]
    assert [kind for kind, _ in made] == ["train", "harden", "defend", "defend"]  # nasty, for nasty+top2
    assert made[1][1].endswith("-nasty") and made[2][1].endswith("-round1") and made[3][1].endswith("-nasty-top2")
    result = CliRunner().invoke(defences.main, ["--only", "none,bogus", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "--only: no defence 'bogus'; choose from none, nasty" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
