"""The audit: the report's schema, cells saved and skipped, clear errors; `nasty demo --quick`."""

import json
import math

import pytest
from click.testing import CliRunner

import attacks.audit as audit_mod
from attacks.audit import audit
from nasty.app.cli import main
from nasty.app.demo import QUICK
from nasty.errors import NastyError

ATTACK_NAMES = ["kd", "hard-label", "dafl", "deepinversion"]  # the default's, less kd-sweep (its own tests)
TINY = {"seeds": (0, 1), "epochs": 1, "students": ["tiny-cnn", "mlp"], "device": "cpu", "quiet": True,
        "attacks": ATTACK_NAMES, "attack_options": {"deepinversion": {"pool_size": 32, "iterations": 3}}}


def run(teachers, out, **kw):
    return audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=out, **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_audit(teachers, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return out, run(teachers, out)


def test_report_json_has_the_schema(tiny_audit, teachers):
    out, report = tiny_audit
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["dataset"] == "digits"
    normal, nasty = on_disk["teachers"]["normal"], on_disk["teachers"]["nasty"]
    assert normal["arch"] == nasty["arch"] == "small-cnn"
    assert isinstance(normal["accuracy"], float) and isinstance(nasty["accuracy"], float)
    assert nasty["omega"] == teachers["nasty"]["omega"] and nasty["tau"] == teachers["nasty"]["tau"]
    assert on_disk["teacher_cost"] == pytest.approx(normal["accuracy"] - nasty["accuracy"], abs=1e-3)
    runs = on_disk["runs"]
    assert {r["attack"] for r in runs} == set(ATTACK_NAMES)
    assert {r["source"] for r in runs} == {"scratch", "label-smoothing", "normal", "nasty"}
    # every (attack, student, source, seed) exactly once
    keys = [(r["attack"], r["student"], r["source"], r["seed"]) for r in runs]
    assert len(keys) == len(set(keys)) == 4 * 2 * 4 * 2
    for r in runs:
        assert set(r) == {"attack", "student", "source", "seed", "accuracy"}
        assert 0.0 <= r["accuracy"] <= 100.0 and isinstance(r["seed"], int)
    assert len(on_disk["summary"]) == 4 * 2
    for s in on_disk["summary"]:
        assert s["attack"] in ATTACK_NAMES and s["student"] in ("tiny-cnn", "mlp")
        for k in ("acc_scratch", "acc_from_normal", "acc_from_nasty"):
            assert set(s[k]) >= {"mean", "std"}
        mine = [r["accuracy"] for r in runs if r["attack"] == s["attack"] and r["student"] == s["student"]
                and r["source"] == "nasty"]
        assert s["acc_from_nasty"]["mean"] == pytest.approx(sum(mine) / len(mine), abs=1e-3)
        assert s["immunity"] == pytest.approx(s["acc_from_normal"]["mean"] - s["acc_from_nasty"]["mean"], abs=1e-3)
        assert s["below_scratch"] == pytest.approx(s["acc_scratch"]["mean"] - s["acc_from_nasty"]["mean"], abs=1e-3)
        smooth = [r["accuracy"] for r in runs if r["attack"] == s["attack"] and r["student"] == s["student"]
                  and r["source"] == "label-smoothing"]
        assert s["acc_label_smoothing"]["mean"] == pytest.approx(sum(smooth) / len(smooth), abs=1e-3)
        assert s["below_label_smoothing"] == pytest.approx(
            s["acc_label_smoothing"]["mean"] - s["acc_from_nasty"]["mean"], abs=1e-3)
        paired = [next(r["accuracy"] for r in runs if r["attack"] == s["attack"] and r["student"] == s["student"]
                       and r["source"] == "normal" and r["seed"] == seed) -
                  next(r["accuracy"] for r in runs if r["attack"] == s["attack"] and r["student"] == s["student"]
                       and r["source"] == "nasty" and r["seed"] == seed) for seed in (0, 1)]
        assert s["immunity"] == pytest.approx(sum(paired) / 2, abs=1e-3)
        assert s["immunity_std"] == pytest.approx(abs(paired[0] - paired[1]) / math.sqrt(2), abs=1e-3)
    # the worst case per student: the attack with the most accuracy from the nasty teacher
    assert [w["student"] for w in on_disk["worst_case"]] == ["tiny-cnn", "mlp"]
    for w in on_disk["worst_case"]:
        rows = [s for s in on_disk["summary"] if s["student"] == w["student"]]
        top = max(rows, key=lambda s: s["acc_from_nasty"]["mean"])
        assert set(w) >= {"student", "attack", "acc_from_nasty", "immunity", "below_scratch", "below_label_smoothing"}
        assert (w["attack"], w["acc_from_nasty"], w["immunity"], w["below_scratch"], w["below_label_smoothing"]) == (
            top["attack"], top["acc_from_nasty"], top["immunity"], top["below_scratch"], top["below_label_smoothing"])
    # what the outputs add to the labels: kd, dafl and deepinversion read outputs, hard-label only labels
    assert [b["student"] for b in on_disk["beyond_labels"]] == ["tiny-cnn", "mlp"]
    for b in on_disk["beyond_labels"]:
        rows = [s for s in on_disk["summary"] if s["student"] == b["student"]]
        hard = next(s for s in rows if s["attack"] == "hard-label")
        best = max((s for s in rows if s["attack"] != "hard-label"), key=lambda s: s["acc_from_nasty"]["mean"])
        labels = max(hard["acc_scratch"]["mean"], hard["acc_label_smoothing"]["mean"], hard["acc_from_nasty"]["mean"])
        assert b["teacher"]["outputs"] == {"attack": best["attack"], "accuracy": best["acc_from_nasty"]["mean"]}
        assert b["teacher"]["labels"]["accuracy"] == labels
        assert b["teacher"]["adds"] == pytest.approx(best["acc_from_nasty"]["mean"] - labels, abs=1e-3)
    md = (out / "report.md").read_text()
    assert md.index("worst attack") < md.index("What the outputs add") < md.index("| kd | tiny-cnn |")
    assert "| kd | tiny-cnn |" in md and "| deepinversion | mlp |" in md


def test_html_report_has_every_section_with_images_embedded(tiny_audit):
    out, report = tiny_audit
    html = (out / "report.html").read_text()
    for section in ("teachers", "immunity", "logits", "tsne", "images"):
        assert f"id='{section}'" in html or f'id="{section}"' in html, section
    assert html.count("data:image/png;base64,") == 3 and "<img src=\"http" not in html
    assert html.index("id=\"worst-case\"") < html.index("id=\"teachers\"") < html.index("id=\"immunity\"")
    assert f"{report['teacher_cost']:+.2f}" in html and "| kd |" not in html
    for name in ("logits.png", "tsne.png", "images.png"):
        assert (out / name).stat().st_size > 10_000
    assert set(json.loads((out / "logits.json").read_text())["teachers"]) == {"normal", "nasty"}


def test_the_report_templates_are_installed_with_the_package():
    """report.md and report.html come from attacks/templates/: package data, found from an installed copy too."""
    import fnmatch
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attacks"]
    templates = [p.relative_to(root / "attacks").as_posix() for p in (root / "attacks" / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in globs) for t in templates), (templates, globs)


def test_a_report_written_before_the_label_smoothing_baseline_still_prints(tiny_audit):
    from attacks.audit import format_html, format_markdown, format_table

    _, report = tiny_audit
    old = json.loads(json.dumps(report))
    del old["worst_case"], old["beyond_labels"]  # newer than the baseline
    old["runs"] = [r for r in old["runs"] if r["source"] != "label-smoothing"]
    for row in old["summary"]:
        for k in ("acc_label_smoothing", "below_label_smoothing", "immunity_std"):
            del row[k]
    table = format_table(old)
    assert table.index("worst attack") < table.index("| kd | tiny-cnn |")
    worst = [line for line in table.splitlines() if line.startswith("| tiny-cnn |")]
    assert len(worst) == 1 and worst[0].endswith("| - |")  # no label-smoothing margin to show
    assert "| kd | tiny-cnn |" in format_markdown(old) and "worst-case" in format_html(old, {})


def test_report_json_reads_as_its_model_with_sides_named_and_old_reports_defaulted(tiny_audit, tmp_path):
    """report.json through nasty.schema.AuditReport: normal/nasty read as reference/teacher, the same dict
    written back, and an older report's missing fields at their defaults; one that does not fit is one line."""
    from attacks.audit import read_report

    out, report = tiny_audit
    on_disk = json.loads((out / "report.json").read_text())
    model = read_report(out / "report.json")
    assert model.teachers.reference.accuracy == on_disk["teachers"]["normal"]["accuracy"]
    assert model.teachers.teacher.omega == on_disk["teachers"]["nasty"]["omega"]
    assert model.summary[0].acc_from_teacher.mean == on_disk["summary"][0]["acc_from_nasty"]["mean"]
    assert model.model_dump(by_alias=True, exclude_unset=True) == on_disk
    old = {k: v for k, v in on_disk.items() if k not in ("worst_case", "beyond_labels", "cells", "notes")}
    old["summary"] = [{k: v for k, v in r.items() if k not in ("acc_label_smoothing", "immunity_std")}
                      for r in on_disk["summary"]]
    (tmp_path / "report.json").write_text(json.dumps({**old, "added_later": 1}))
    model = read_report(tmp_path / "report.json")
    assert model.worst_case == [] and model.cells is None and model.summary[0].acc_label_smoothing is None
    (tmp_path / "report.json").write_text(json.dumps({**old, "summary": [{"attack": "kd"}]}))
    with pytest.raises(NastyError, match="report.json: field summary.0.student") as e:
        read_report(tmp_path / "report.json")
    assert "\n" not in str(e.value)


def test_the_report_gives_each_teachers_served_utility_and_old_reports_still_print(tiny_audit):
    from attacks.audit import format_html, format_markdown, format_table

    out, report = tiny_audit
    on_disk = json.loads((out / "report.json").read_text())
    for side in ("normal", "nasty"):
        u = on_disk["teachers"][side]["utility"]
        assert set(u) == {"nll", "ece", "top5"} and u["nll"] > 0 and 0 <= u["ece"] <= 1 and 0 <= u["top5"] <= 100
        assert u["top5"] >= on_disk["teachers"][side]["accuracy"] - 1e-6  # top-5 holds top-1
    table = format_table(report)
    assert "| reference | none |" in table and f"{on_disk['teachers']['nasty']['utility']['nll']:.3f}" in table
    assert "id='utility'" in format_html(report, {})
    old = json.loads(json.dumps(report))
    for side in ("normal", "nasty"):
        del old["teachers"][side]["utility"]
    assert "served NLL" not in format_table(old) and "id='utility'" not in format_html(old, {})
    assert "| kd | tiny-cnn |" in format_markdown(old)


def test_cells_that_recorded_dafls_old_setting_names_are_still_used(tiny_audit, teachers, monkeypatch):
    out, report = tiny_audit
    path = out / "cells" / "dafl-seed0.json"
    cell = json.loads(path.read_text())
    settings = cell["key"]["settings"]
    for old, new in (("oh", "one_hot"), ("a", "activation"), ("ie", "entropy")):
        settings[old] = settings.pop(new)
    path.write_text(json.dumps(cell))
    monkeypatch.setattr(audit_mod, "run_cells", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    assert run(teachers, out)["runs"] == report["runs"]
def test_data_free_cells_keep_their_images_and_the_report_shows_them_without_training(tiny_audit, teachers,
                                                                                      monkeypatch):
    """report.html shows what the audit's own DAFL generator and DeepInversion pool made (saved with
    each cell); drawing it trains no generator and inverts no image again."""
    from safetensors.torch import load_file

    import attacks.dafl
    import attacks.deepinversion

    out, report = tiny_audit
    for name in ("dafl", "deepinversion"):
        for seed in (0, 1):
            saved = load_file(str(out / "cells" / f"{name}-seed{seed}.images.safetensors"))
            assert set(saved) == {f"{src}.{k}" for src in ("normal", "nasty") for k in ("images", "labels")}
            n = 40 if name == "dafl" else 32  # 4 a class; the DeepInversion pool here holds 32 images in all
            assert saved["nasty.images"].shape == (n, 1, 8, 8) and saved["nasty.labels"].shape == (n,)
            assert int(saved["nasty.labels"].min()) >= 0 and int(saved["nasty.labels"].max()) < 10
    assert not list((out / "cells").glob("kd-*.images.safetensors"))  # real-data attacks have none

    def boom(*a, **k):
        raise AssertionError("the report made images again instead of showing the audit's")

    for target, name in ((attacks.dafl.DAFL, "sample"), (attacks.dafl.DAFL, "inputs"),
                         (attacks.deepinversion.DeepInversion, "sample"), (attacks.deepinversion, "synthesize"),
                         (audit_mod, "run_cells")):
        monkeypatch.setattr(target, name, boom)
    html_before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    run(teachers, out)  # every cell is done: only report.html is drawn again, from the saved images
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and html == html_before


def test_an_attack_option_beats_the_audit_level_value_for_that_attack(teachers, tmp_path):
    """--tau/--alpha reach every attack; --attack-option dafl.tau=2 overrides it for dafl alone
    (it used to end in "create_attack() got multiple values for keyword argument 'tau'")."""
    res = CliRunner().invoke(main, ["audit", "--teacher", str(teachers["root"] / "nasty"), "--reference",
                                    str(teachers["root"] / "normal"), "--out", str(tmp_path), "--attacks", "kd,dafl",
                                    "--students", "mlp", "--seeds", "0,", "--epochs", "1", "--tau", "3", "--alpha",
                                    "0.5", "--attack-option", "dafl.tau=2", "--attack-option", "kd.alpha=0.7",
                                    "--no-plots", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    settings = json.loads((tmp_path / "report.json").read_text())["settings"]["attacks"]
    assert settings["dafl"]["tau"] == 2 and settings["kd"] == {"alpha": 0.7, "tau": 3.0}


def test_scratch_baseline_is_shared_by_every_attack(tiny_audit):
    _, report = tiny_audit
    for baseline in ("scratch", "label-smoothing"):
        by_attack = {a: sorted((r["student"], r["seed"], r["accuracy"]) for r in report["runs"]
                               if r["attack"] == a and r["source"] == baseline) for a in ATTACK_NAMES}
        assert len({tuple(v) for v in by_attack.values()}) == 1 and len(by_attack["kd"]) == 2 * 2


def test_rerun_skips_completed_cells(tiny_audit, teachers, monkeypatch):
    out, report = tiny_audit
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len([c for c in cells if c.endswith(".json")]) == 2 * 6  # (scratch + label smoothing + 4 attacks) x 2 seeds
    assert len([c for c in cells if c.endswith(".images.safetensors")]) == 2 * 2  # dafl, deepinversion x 2 seeds
    assert len(cells) == 2 * 8

    def boom(*a, **k):
        raise AssertionError("a completed cell was trained again")

    monkeypatch.setattr(audit_mod, "run_cells", boom)
    again = run(teachers, out)
    assert again["runs"] == report["runs"]


def test_rerun_after_a_lost_cell_trains_only_that_cell(tiny_audit, teachers, monkeypatch):
    out, report = tiny_audit
    (out / "cells" / "kd-seed1.json").unlink()
    calls = []
    real = audit_mod.run_cells
    monkeypatch.setattr(audit_mod, "run_cells", lambda attack, *a, **k: calls.append(attack.name) or real(attack, *a, **k))
    again = run(teachers, out)
    assert calls == ["kd"]
    assert again["summary"] == report["summary"]  # same seed, same data order: the same numbers


def test_other_settings_in_the_same_out_are_refused_and_nothing_is_overwritten(tiny_audit, teachers):
    out, _ = tiny_audit
    before = (out / "report.json").read_text()
    with pytest.raises(NastyError, match="another audit.*epochs"):
        run(teachers, out, epochs=2, attacks=["hard-label"])
    opts = {"deepinversion": {**TINY["attack_options"]["deepinversion"], "tv": 0.5}}
    with pytest.raises(NastyError, match=r"settings\.tv differs: 0\.001 there, 0\.5 now"):
        run(teachers, out, attack_options=opts)
    assert (out / "report.json").read_text() == before


def test_bad_audit_inputs(teachers, tmp_path):
    with pytest.raises(NastyError, match="unknown attack 'fgsm'"):
        run(teachers, tmp_path, attacks=["kd", "fgsm"])
    with pytest.raises(NastyError, match="unknown architecture 'resnet9000'"):
        run(teachers, tmp_path, students=["resnet9000"])
    with pytest.raises(NastyError, match="`alpha`"):
        run(teachers, tmp_path, alpha=1.5)


def test_cli_audit_errors_are_one_line(teachers, tmp_path):
    base = ["audit", "--teacher", str(teachers["root"] / "nasty"), "--reference", str(teachers["root"] / "normal"),
            "--out", str(tmp_path)]
    for extra, code, words in ((["--attacks", "kd,nope"], 1, "unknown attack 'nope'"),
                               (["--seeds", "0"], 2, "at least 1"),
                               (["--seeds", "a,b"], 2, "comma-separated list of integers"),
                               (["--alpha", "2"], 2, "--alpha"),
                               (["--attack-option", "dafl.lr_g"], 2, "ATTACK.KEY=VALUE"),
                               (["--attack-option", "dafl.lr_g=fast"], 2, "must be a number"),
                               (["--attack-option", "dafl.nope=1"], 1, "dafl has no setting 'nope'"),
                               (["--attack-option", "fgsm.x=1"], 1, "unknown attack 'fgsm'"),
                               (["--attack-option", "deepinversion.rounds=0"], 1, "deepinversion.rounds must be a whole number from 1")):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == code, res.output
        assert words in res.output and "Traceback" not in res.output


def test_attack_options_reach_the_attack_and_the_cell_key(teachers, tmp_path):
    report = run(teachers, tmp_path, attacks=["deepinversion"], seeds=(0,), students=["mlp"], plots=False,
                 attack_options={"deepinversion": {"pool_size": 16, "iterations": 2, "bn": 0.5}})
    assert not (tmp_path / "report.html").exists()
    settings = report["settings"]["attacks"]["deepinversion"]
    assert (settings["pool_size"], settings["iterations"], settings["bn"]) == (16, 2, 0.5)


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--quick", "--quiet", "--out", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert {s["attack"] for s in report["summary"]} == set(QUICK["attacks"])
    assert "id='images'" in (tmp_path / "audit" / "report.html").read_text()
    assert "| dafl | tiny-cnn |" in res.output
    assert "--quick is a smoke test" in res.output and "mean nothing" in res.output
    # a second run reuses the teachers and every cell
    again = CliRunner().invoke(main, ["demo", "--quick", "--quiet", "--out", str(tmp_path), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "audit" / "report.json").read_text())["runs"] == report["runs"]


def test_deepinversion_on_teachers_without_batchnorm_fails_before_training(tmp_path):
    from nasty.runs import harden, train

    train(dataset="digits", arch="mlp", epochs=1, out=tmp_path / "n", quiet=True, device="cpu")
    harden(teacher=tmp_path / "n", epochs=1, omega=0.05, out=tmp_path / "x", quiet=True, device="cpu")
    with pytest.raises(NastyError, match="BatchNorm.*`attacks` kd,hard-label,dafl"):
        audit(teacher=tmp_path / "x", reference=tmp_path / "n", out=tmp_path / "a", device="cpu", quiet=True)
    assert not list((tmp_path / "a").glob("cells/*.json"))  # nothing was trained


# --------------------------------------------------------------------------- resuming inside a cell


@pytest.mark.parametrize("name,opts", [
    ("kd", {}),
    ("skeptical", {"delay": 1}),  # its auxiliary heads are in the students' state
    ("kd-sweep", {"taus": (1.0, 4.0), "alphas": (0.9,), "search_epochs": 1, "search_steps": 0}),  # its choice, not made again
    ("kd-topk", {"k": 2}),
    ("dafl", {}),  # the generator, its Adam state and its noise stream
    ("deepinversion", {"pool_size": 48, "iterations": 4, "rounds": 3, "competition": 0.5}),  # the pool, made in rounds
])
def test_a_cell_resumed_from_a_saved_epoch_ends_bit_identical(name, opts, teachers, digits):
    import io

    import torch

    from attacks import create_attack
    from attacks.base import run_students
    from nasty.checkpoint import load_model
    from nasty.trainer import TrainConfig

    models = {src: load_model(teachers["root"] / src)[0] for src in ("normal", "nasty")}
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=1)

    def train(resume=None):
        states = []

        def save(state):  # through bytes, as the audit's file is, and read back with weights_only
            buf = io.BytesIO()
            torch.save(state, buf)
            states.append(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))

        attack = create_attack(name, **opts)
        if resume is not None and name == "kd-sweep":  # its choice comes back from the state
            attack.select = lambda *a, **k: pytest.fail("kd-sweep chose again on resume")
        acc = run_students(attack, models, ["tiny-cnn"], data=digits, config=cfg, device="cpu",
                           resume=resume, save=save)
        return acc, states

    whole, states = train()
    assert [s["epoch"] for s in states] == [1, 2]  # offered after every epoch but the last
    resumed, again = train(resume=states[0])
    assert [s["epoch"] for s in again] == [2]
    a, b = states[1]["students"], again[0]["students"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed == whole


@pytest.mark.slow
def test_an_audit_killed_inside_a_cell_goes_on_from_its_partial_state(teachers, tmp_path, monkeypatch):
    settings = {"attacks": ["dafl"], "seeds": (0,), "epochs": 3, "checkpoint_seconds": 0}
    reference = run(teachers, tmp_path / "whole", **settings)
    real = audit_mod.run_cells

    def crash_after_epoch_2(attack, *a, save=None, **k):
        def save_then_crash(states):
            save(states)
            if attack.name == "dafl" and states[0]["epoch"] == 2:
                raise KeyboardInterrupt  # the process dies here
        return real(attack, *a, save=save_then_crash, **k)

    monkeypatch.setattr(audit_mod, "run_cells", crash_after_epoch_2)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(teachers, out, **settings)
    partial = out / "cells" / "dafl-seed0.partial.pt"
    assert partial.exists() and not (out / "cells" / "dafl-seed0.json").exists()
    monkeypatch.setattr(audit_mod, "run_cells", real)
    report = run(teachers, out, **settings)
    cell = json.loads((out / "cells" / "dafl-seed0.json").read_text())
    assert cell["resumed_from_epoch"] == 2 and not partial.exists()
    assert report["runs"] == reference["runs"]


def test_a_partial_cell_of_another_audit_is_refused_unless_forced(tiny_audit, teachers, tmp_path):
    import torch

    from nasty.checkpoint import save_resume_file

    key = {**json.loads((tiny_audit[0] / "cells" / "kd-seed0.json").read_text())["key"], "epochs": 99}
    out = tmp_path / "other"
    partial = out / "cells" / "kd-seed0.partial.pt"
    save_resume_file(partial, {"key": key, "epoch": 1, "seconds": 1.0})
    with pytest.raises(NastyError, match="another audit.*epochs differs: 99 there, 1 now"):
        run(teachers, out, attacks=["kd"], seeds=(0,))
    assert torch.load(partial, weights_only=True)["key"] == key  # nothing overwritten
    run(teachers, out, attacks=["kd"], seeds=(0,), force=True)
    assert not partial.exists() and (out / "cells" / "kd-seed0.json").exists()


def test_the_report_says_what_the_tuning_thief_chose_and_when_it_saw_nothing(tiny_audit):
    from attacks.audit import chosen, format_html, format_table

    _, report = tiny_audit
    assert "chose" not in format_table(report)  # no attack that tunes itself: nothing to say
    tried = lambda *accs: [{"tau": t, "alpha": 0.5, "val_accuracy": a} for t, a in zip((1.0, 2.0, 4.0), accs)]
    pick = lambda tau, acc, rows: {"tau": tau, "alpha": 0.5, "val_accuracy": acc, "tried": rows}
    report = {**report, "notes": {
        "kd-sweep-seed1": {"nasty": {"picks": {"mlp": pick(1.0, 11.1, tried(11.1, 11.1, 11.1))}},
                           "normal": {"picks": {"mlp": pick(4.0, 90.0, tried(80.0, 85.0, 90.0))}}},
        "kd-sweep-seed0": {"nasty": {"picks": {"mlp": pick(2.0, 70.0, tried(60.0, 70.0, 70.0)),
                                               "<b>|x": pick(1.0, 50.0, tried(50.0, 40.0, 30.0))}}},
        "kd-sweep-seedX": {"nasty": {"picks": {"mlp": pick(8.0, 1.0, [])}}},  # malformed: left out
        "dafl-seed0": {"nasty": {"picks": "not a dict"}}}}
    assert chosen(report) == {"kd-sweep": {
        "teacher": {"mlp": [(0, "2/0.5", 2, 3), (1, "1/0.5", 3, 3)], "<b>|x": [(0, "1/0.5", 1, 3)]},
        "reference": {"mlp": [(1, "4/0.5", 1, 3)]}}}
    lines = format_table(report).split("What kd-sweep chose")[1].splitlines()
    assert lines[1] == r"- from the teacher: mlp 2/0.5 (2 of 3 tied), 1/0.5 (3 of 3 tied); \<b\>\|x 1/0.5"
    assert lines[2] == "- from the reference: mlp 4/0.5"
    assert "the search saw no signal" in lines[3]
    page = format_html(report, {})
    assert "<b>|x" not in page and "&lt;b&gt;|x 1/0.5" in page and "(3 of 3 tied)" in page


def test_a_kd_sweep_cell_from_before_search_steps_is_read_as_the_search_it_ran(tmp_path):
    from attacks._cells import _rename_settings, _same_key

    key = {"attack": "kd-sweep", "settings": {"taus": [1.0], "search_epochs": 5}}
    _rename_settings(key)
    # no floor back then, one split, the search capped at the schedule's epochs
    assert key["settings"] == {"taus": [1.0], "search_epochs": 5, "search_steps": 0, "val_images": 0,
                               "match_steps": False}
    assert _same_key(key, json.loads(json.dumps(key)), tmp_path / "cells" / "kd-sweep-seed0.json", force=False)
    now = {"attack": "kd-sweep", "settings": {"taus": [1.0], "search_epochs": 5, "search_steps": 80, "val_images": 0,
                                              "match_steps": False}}
    with pytest.raises(NastyError, match="settings.search_steps differs: 0 there, 80 now"):
        _same_key(key, now, tmp_path / "cells" / "kd-sweep-seed0.json", force=False)
    # hard-label-sweep came with search_steps; its cells from before the two later settings read the same way
    hls = {"attack": "hard-label-sweep", "settings": {"taus": [1.0], "search_steps": 80}}
    _rename_settings(hls)
    assert hls["settings"] == {"taus": [1.0], "search_steps": 80, "val_images": 0, "match_steps": False}


def test_force_redoes_a_partial_cell_of_other_settings_and_goes_on_with_one_of_these(tiny_audit, tmp_path):
    from attacks.audit import _load_partial
    from nasty.checkpoint import save_resume_file

    key = json.loads((tiny_audit[0] / "cells" / "kd-seed0.json").read_text())["key"]
    partial = tmp_path / "cells" / "kd-seed0.partial.pt"
    save_resume_file(partial, {"key": key, "epoch": 1, "seconds": 1.0})
    assert _load_partial(partial, key, force=True)["epoch"] == 1 and partial.exists()  # these settings: go on
    assert _load_partial(partial, {**key, "epochs": 99}, force=True) is None and not partial.exists()
    partial.write_bytes(b"not a checkpoint")
    with pytest.raises(NastyError, match="cannot read"):
        _load_partial(partial, key, force=False)
    assert _load_partial(partial, key, force=True) is None and not partial.exists()


def test_the_demo_redoes_audit_cells_that_an_older_version_left_with_other_settings(tmp_path, monkeypatch):
    """An upgraded user's runs/demo: a kd-sweep cell from before ``search_steps`` is redone, not refused."""
    import nasty.app.demo as demo

    calls = []
    monkeypatch.setattr(demo, "train", lambda **k: {"accuracy": 99.0})
    monkeypatch.setattr(demo, "harden", lambda **k: {"accuracy": 98.0, "omega": 0.05, "teacher_cost": 1.0,
                                                     "search": {"max_cost": 1.0}})
    monkeypatch.setattr(audit_mod, "audit", lambda **k: calls.append(k) or {})
    demo.run_demo(out=tmp_path, quiet=True)
    assert calls[0]["force"] is True and calls[0]["out"] == tmp_path / "audit"


def test_what_the_outputs_add_to_the_labels():
    """Per student and teacher: the strongest thief of the outputs against the best student from
    labels alone (the baselines and the thieves of the top-1 answers), in the report and its tables."""
    from attacks.audit import beyond_labels, format_html, format_table

    def row(attack, student, normal, nasty, scratch=90.0, smooth=91.0):
        m = lambda v: {"mean": v, "std": 0.0}  # noqa: E731
        return {"attack": attack, "student": student, "seeds": 1, "acc_scratch": m(scratch),
                "acc_label_smoothing": m(smooth), "acc_from_normal": m(normal), "acc_from_nasty": m(nasty),
                "immunity": normal - nasty, "immunity_std": 0.0, "below_scratch": scratch - nasty,
                "below_label_smoothing": smooth - nasty}
    summary = [row("kd", "a", 95.0, 80.0), row("kd-sweep", "a", 94.0, 92.5), row("hard-label-sweep", "a", 93.0, 93.0),
               row("kd", "b", 92.0, 90.0, smooth=92.5), row("hard-label", "c", 90.0, 90.0)]
    got = beyond_labels(summary, {"hard-label", "hard-label-sweep"})
    assert [r["student"] for r in got] == ["a", "b"]  # c has no thief of the outputs
    a, b = got
    assert a["teacher"] == {"outputs": {"attack": "kd-sweep", "accuracy": 92.5},
                            "labels": {"attack": "hard-label-sweep", "accuracy": 93.0}, "adds": -0.5}
    assert a["reference"]["outputs"] == {"attack": "kd", "accuracy": 95.0} and a["reference"]["adds"] == 2.0
    assert b["teacher"]["labels"] == {"attack": "label-smoothing", "accuracy": 92.5} and b["teacher"]["adds"] == -2.5
    report = {"summary": summary, "worst_case": None, "beyond_labels": got, "teachers": {
        "normal": {"arch": "x", "accuracy": 99.0}, "nasty": {"arch": "x", "accuracy": 98.0, "omega": 1, "tau": 4}},
        "settings": {"epochs": 1, "alpha": 0.9, "tau": 4}, "runs": [], "train_fraction": 1.0, "teacher_cost": 1.0,
        "dataset": "digits"}
    table = format_table(report)
    assert "| a | kd-sweep 92.50 | hard-label-sweep 93.00 | -0.50 | kd 95.00 | hard-label-sweep 93.00 | +2.00 |" in table
    assert "beyond-labels" in format_html(report, {})
    del report["beyond_labels"]  # a report from before: no such table
    assert "What the outputs add" not in format_table(report)
