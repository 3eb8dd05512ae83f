"""nasty compare: defences side by side, baselines trained once, resumable after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from attacks.compare import pareto_front
from nasty.app.cli import main
from nasty.errors import NastyError

SETTINGS = ["--attacks", "kd,hard-label", "--students", "mlp", "--seeds", "1,", "--epochs", "2", "--device", "cpu",
            "--quiet", "--no-plots"]


def test_the_pareto_front_keeps_what_nothing_beats():
    # (teacher accuracy, stolen accuracy): more accurate and less stolen is better
    pts = [(99.0, 97.0), (98.0, 90.0), (97.0, 95.0), (99.0, 98.0), (96.0, 80.0)]
    assert pareto_front(pts) == [4, 1, 0]


@pytest.fixture(scope="module")
def defended(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])  # noqa: E731
    assert run("train", "--arch", "tiny-cnn", "--epochs", 2, "--out", root / "n", "-q").exit_code == 0
    assert run("defend", "--teacher", root / "n", "--topk", 1, "--out", root / "k1").exit_code == 0
    return root


def _compare(root, out, background=False):
    cmd = [sys.executable, "-m", "nasty", "compare", "--reference", str(root / "n"), "--teachers",
           f"{root / 'n'},{root / 'k1'}", *SETTINGS, "--out", str(out)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow  # three comparisons, one killed (31 s); the reference-side reuse is also checked below, in-process
def test_compare_trains_the_baselines_once_and_resumes_after_a_kill(defended, tmp_path):
    done = _compare(defended, tmp_path / "ref")
    assert done.returncode == 0, done.stderr
    ref = json.loads((tmp_path / "ref" / "compare.json").read_text())
    assert [r["defence"] for r in ref["rows"]] == ["none", "topk k=1"]
    # top-1 keeps the argmax: the same accuracy, and the hard-label thief steals exactly the same
    assert ref["rows"][0]["accuracy"] == ref["rows"][1]["accuracy"] and ref["rows"][1]["cost"] == 0
    hard = [next(s for s in r["summary"] if s["attack"] == "hard-label") for r in ref["rows"]]
    assert hard[0]["acc_from_nasty"] == hard[1]["acc_from_nasty"]
    # the scratch and label-smoothing cells of the second audit are the first one's, not trained again
    for cell in ("scratch-seed1.json", "label-smoothing-seed1.json"):
        a, b = (tmp_path / "ref" / "audits" / name / "cells" / cell for name in ("n", "k1"))
        assert a.read_bytes() == b.read_bytes()
    # kill a comparison once its first audit has a cell, then run it again: the same result
    p = _compare(defended, tmp_path / "x", background=True)
    while not list((tmp_path / "x" / "audits").glob("*/cells/kd-seed1.json")):
        assert p.poll() is None, "the comparison ended before it could be killed"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = _compare(defended, tmp_path / "x")
    assert again.returncode == 0, again.stderr
    got = json.loads((tmp_path / "x" / "compare.json").read_text())
    strip = lambda d: [{k: v for k, v in r.items() if k != "teacher"} for r in d["rows"]]  # noqa: E731
    assert strip(got) == strip(ref)


def test_compare_draws_the_front(defended, tmp_path):
    from attacks.compare import compare

    result = compare(reference=defended / "n", teachers=[defended / "n", defended / "k1"], attacks=["kd"],
                     students=["mlp"], seeds=(0,), epochs=1, out=tmp_path, device="cpu", quiet=True)
    assert (tmp_path / "compare.png").stat().st_size > 0 and len(result["rows"]) == 2
    assert set(result["rows"][0]["worst_case"]) == {"mlp"}
    table = (tmp_path / "compare.md").read_text().splitlines()
    assert table[2] == ("| defence | teacher accuracy | cost | served NLL | ECE | top-5 | kd mlp | "
                        "worst case mlp | outputs add to labels mlp |")
    kd = [r["worst_case"]["mlp"]["acc_from_teacher"] for r in result["rows"]]
    u = [r["utility"] for r in result["rows"]]
    # the served top-1 keeps the argmax but cuts every other class off: the same accuracy, a far worse NLL
    assert u[1]["nll"] > u[0]["nll"] and u[1]["top5"] < u[0]["top5"]
    cells = [f"{x['nll']:.3f} | {x['ece']:.3f} | {x['top5']:.2f}" for x in u]
    # what the outputs add: kd (the only thief of the outputs) less the better of scratch and label smoothing
    labels = max(result["rows"][0]["summary"][0][k]["mean"] for k in ("acc_scratch", "acc_label_smoothing"))
    assert table[4:] == [
        f"| none | {result['rows'][0]['accuracy']:.2f} | +0.00 | {cells[0]} | {kd[0]:.2f} | {kd[0]:.2f} (kd) | "
        f"{kd[0] - labels:+.2f} |",
        f"| topk k=1 | {result['rows'][1]['accuracy']:.2f} | +0.00 | {cells[1]} | {kd[1]:.2f} | {kd[1]:.2f} (kd) | "
        f"{kd[1] - labels:+.2f} |"]
    # a comparison written before utility was measured still prints and plots (one row of panels)
    from attacks.compare import format_compare, plot_compare

    old = {**result, "rows": [{k: v for k, v in r.items() if k != "utility"} for r in result["rows"]]}
    assert "| - | - | - |" in format_compare(old)
    assert len(plot_compare(old).axes) == 1 and len(plot_compare(result).axes) == 2


def test_the_compare_table_escapes_what_came_from_files():
    from attacks.compare import format_compare

    acc = {"mean": 90.0, "std": 0.0}
    summary = [{"attack": "kd|<b>", "student": "mlp", "acc_from_nasty": acc, "acc_from_normal": acc, "acc_scratch": acc}]
    result = {"reference": "runs/<img src=x>", "settings": {"seeds": [0]}, "rows": [
        {"defence": "x | <script>", "accuracy": 99.0, "cost": 0.5, "summary": summary,
         "worst_case": {"mlp": {"attack": "kd|<b>", "acc_from_teacher": 90.0}}}]}
    text = format_compare(result)
    assert "<script>" not in text and "<b>" not in text and r"runs/\<img src=x\>" in text
    row = text.splitlines()[-1]
    assert row.count(" | ") == 8 and row.startswith(
        r"| x \| \<script\> | 99.00 | +0.50 | - | - | - | 90.00 | 90.00 (kd\|\<b\>) | +0.00 |")
    assert "label smoothing -" in text  # a baseline the rows do not have is a dash


def test_an_audit_takes_the_reference_side_from_another_audits_cells(defended, tmp_path, monkeypatch):
    import attacks.audit as audit_mod
    from attacks.audit import audit

    kw = {"reference": defended / "n", "attacks": ["kd"], "students": ["mlp"], "seeds": (1,), "epochs": 2,
          "device": "cpu", "quiet": True, "plots": False, "checkpoint_seconds": 0}
    audit(teacher=defended / "n", out=tmp_path / "first", **kw)
    alone = audit(teacher=defended / "k1", out=tmp_path / "alone", **kw)
    sides, crash, real = [], [False], audit_mod.run_cells

    def record(attack, teachers, *a, save=None, **k):
        sides.append((attack.name, sorted(teachers)))

        def save_then_crash(states):
            save(states)
            if crash[0] and attack.name == "kd":
                raise KeyboardInterrupt  # killed after the first epoch's state is written
        return real(attack, teachers, *a, save=save_then_crash, **k)

    monkeypatch.setattr(audit_mod, "run_cells", record)
    first = tmp_path / "first"
    cells = first / "cells"
    taken = audit(teacher=defended / "k1", out=tmp_path / "taken", reference_from=first, **kw)
    assert sides == [("scratch", ["scratch"]), ("label-smoothing", ["label-smoothing"]), ("kd", ["nasty"])]
    assert taken["runs"] == alone["runs"]  # the reference's students are the same; the teacher's trained alike
    cell = json.loads((tmp_path / "taken" / "cells" / "kd-seed1.json").read_text())
    assert cell["reference_from"] == str(cells / "kd-seed1.json")

    crash[0] = True  # a kill inside the audited side's training leaves its own partial state
    with pytest.raises(KeyboardInterrupt):
        audit(teacher=defended / "k1", out=tmp_path / "killed", reference_from=first, **kw)
    assert (tmp_path / "killed" / "cells" / "kd-seed1.audited.partial.pt").exists()
    crash[0], sides[:] = False, []
    resumed = audit(teacher=defended / "k1", out=tmp_path / "killed", reference_from=first, **kw)
    assert sides == [("kd", ["nasty"])] and resumed["runs"] == taken["runs"]
    assert not list((tmp_path / "killed" / "cells").glob("*.pt"))

    sides.clear()  # other settings (one epoch): the first audit's cells do not fit, both sides train
    audit(teacher=defended / "k1", out=tmp_path / "other", reference_from=first, **{**kw, "epochs": 1})
    assert sides[-1] == ("kd", ["nasty", "normal"])

    forged = json.loads((cells / "kd-seed1.json").read_text())  # its key fits, but its runs are another seed's
    forged["runs"] = [{**r, "seed": 0} for r in forged["runs"]]
    (tmp_path / "forged" / "cells").mkdir(parents=True)
    (tmp_path / "forged" / "cells" / "kd-seed1.json").write_text(json.dumps(forged))
    sides.clear()
    audit(teacher=defended / "k1", out=tmp_path / "not-forged", reference_from=tmp_path / "forged", **kw)
    assert sides[-1] == ("kd", ["nasty", "normal"])


def test_a_served_teacher_is_not_taken_for_its_bare_network(defended, tmp_path):
    """top-1 keeps the weights (and their sha256) of the model it serves: the cells say what each
    teacher answered through, so one folder's results are never read as the other's."""
    from attacks.audit import audit

    kw = {"reference": defended / "n", "attacks": ["kd"], "students": ["mlp"], "seeds": (0,), "epochs": 1,
          "device": "cpu", "quiet": True, "plots": False, "out": tmp_path}
    audit(teacher=defended / "k1", **kw)
    cell = tmp_path / "cells" / "kd-seed0.json"
    assert json.loads(cell.read_text())["key"]["served"] == {"normal": None, "nasty": {"name": "topk", "k": 1}}
    with pytest.raises(NastyError, match=r"served\.nasty differs: \{'name': 'topk', 'k': 1\} there, None now"):
        audit(teacher=defended / "n", **kw)
    bare = audit(teacher=defended / "n", **{**kw, "force": True})
    [row] = bare["summary"]
    assert row["acc_from_nasty"] == row["acc_from_normal"]  # the reference against itself, trained alike
    # a cell from before `served` was recorded reads as one of bare teachers: taken, not trained again
    old = json.loads(cell.read_text())
    del old["key"]["served"]
    cell.write_text(json.dumps(old))
    stamp = cell.stat().st_mtime_ns
    assert audit(teacher=defended / "n", **kw)["runs"] == bare["runs"] and cell.stat().st_mtime_ns == stamp
    with pytest.raises(NastyError, match=r"served\.nasty differs"):
        audit(teacher=defended / "k1", **kw)


def test_a_thief_with_part_of_the_data_in_every_audit(defended, tmp_path):
    from attacks.compare import compare

    result = compare(reference=defended / "n", teachers=[defended / "k1"], attacks=["kd"], students=["mlp"],
                     seeds=(0,), epochs=1, train_fraction=0.5, out=tmp_path, device="cpu", quiet=True, plots=False)
    report = json.loads((tmp_path / "audits" / "k1" / "report.json").read_text())
    assert report["train_fraction"] == 0.5 and result["settings"]["train_fraction"] == 0.5
    assert "the thief holding 0.5 of the training set" in (tmp_path / "compare.md").read_text()


def test_an_audit_of_a_model_against_itself_trains_one_side(defended, tmp_path, monkeypatch):
    """The row of no defence in a comparison is the reference against itself: the same weights
    answering the same way teach the same students, so one side is trained and recorded as both."""
    import attacks.audit as audit_mod
    from attacks.audit import _images_path, _load_images, audit

    sides, real = [], audit_mod.run_cells

    def record(attack, teachers, *a, **k):
        sides.append((attack.name, sorted(teachers)))
        return real(attack, teachers, *a, **k)

    monkeypatch.setattr(audit_mod, "run_cells", record)
    kw = {"attacks": ["kd", "dafl"], "students": ["mlp"], "seeds": (0,), "epochs": 1, "device": "cpu", "quiet": True}
    same = audit(teacher=defended / "n", reference=defended / "n", out=tmp_path / "same", **kw)
    assert [s for s in sides if s[0] in kw["attacks"]] == [("kd", ["nasty"]), ("dafl", ["nasty"])]
    assert {row["attack"]: row["immunity"] for row in same["summary"]} == {"kd": 0.0, "dafl": 0.0}
    for name in kw["attacks"]:
        cell = json.loads((tmp_path / "same" / "cells" / f"{name}-seed0.json").read_text())
        assert cell["mirrored"] is True
        by_side = {src: {r["student"]: r["accuracy"] for r in cell["runs"] if r["source"] == src}
                   for src in ("normal", "nasty")}
        assert by_side["normal"] == by_side["nasty"] and len(by_side["normal"]) == 1
    images = _load_images(_images_path(tmp_path / "same" / "cells" / "dafl-seed0.json"))
    assert sorted(images) == ["nasty", "normal"] and all(
        a.equal(b) for a, b in zip(images["normal"], images["nasty"]))
    assert (tmp_path / "same" / "report.html").is_file()  # its image grid shows both sides' images
    # the same weights answering only their top-1 are another teacher: both sides train
    sides.clear()
    audit(teacher=defended / "k1", reference=defended / "n", out=tmp_path / "k1", **{**kw, "attacks": ["kd"],
                                                                                         "plots": False})
    assert sides[-1] == ("kd", ["nasty", "normal"])


def test_compare_takes_weights_with_what_they_do_not_record(defended, tmp_path):
    """A reference trained elsewhere (a plain state dict) goes through `nasty compare` as through
    `nasty audit`: --arch and --dataset say what the file does not, and without them the one
    line names this command's flags."""
    import torch

    from nasty.checkpoint import load_model

    net, _ = load_model(defended / "n")
    torch.save(net.state_dict(), tmp_path / "n.pt")
    run = lambda *a: CliRunner().invoke(main, ["compare", "--reference", str(tmp_path / "n.pt"), "--teachers",  # noqa: E731
                                               str(defended / "k1"), *SETTINGS, *a])
    bare = run("--out", tmp_path / "bare")
    assert bare.exit_code == 1 and "does not record its architecture; pass --arch (see" in bare.output
    done = run("--arch", "tiny-cnn", "--dataset", "digits", "--out", tmp_path / "c")
    assert done.exit_code == 0, done.output
    row = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"][0]
    assert row["defence"] == "topk k=1" and row["cost"] == 0  # the same weights: the file is the run's network
