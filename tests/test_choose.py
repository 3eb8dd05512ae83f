"""Choosing a serving defence on validation data (attacks/choose.py, `nasty choose`)."""

import json

import pytest
import torch

from attacks.choose import LABELS_ONLY, choose_defence, format_choice, pick, undecided


def _row(name, value, *, cost=0.0):
    v = None if value is None else {s: {"mean": m, "std": 0.0} for s, m in value.items()}
    return {"name": name, "value": v, "cost": cost, "accuracy": 99.0}


def test_pick_serves_the_first_row_in_order_that_gives_nothing_beyond_labels():
    rows = [_row("none", {"a": 3.0}), _row("round-1", {"a": 0.5}), _row("top-2", {"a": -0.4, "b": 0.0}),
            _row("top-2+round-1", {"a": -1.0}), _row("top-1", None)]
    assert pick(rows, max_value=0.0, max_cost=1.0)["name"] == "top-2"  # the first in order of those that hold
    assert [r["holds"] for r in rows] == [False, False, True, True, True]
    assert pick(rows, max_value=0.5, max_cost=1.0)["name"] == "round-1"  # a looser target admits more
    rows[2]["cost"] = 1.5  # too costly: the next one
    assert pick(rows, max_value=0.0, max_cost=1.0)["name"] == "top-2+round-1"
    rows[2]["cost"], rows[2]["value"]["b"]["mean"], rows[3]["value"]["a"]["mean"] = 0.0, 0.1, 0.2  # every student
    assert pick(rows, max_value=0.0, max_cost=1.0)["name"] == "top-1"  # none holds: labels alone
    assert pick([_row("none", {"a": -0.2}), _row("top-2", {"a": -5}), _row("top-1", None)], max_value=0.0,
                max_cost=1.0)["name"] == "none"  # nothing to protect: no defence
    assert pick([_row("x", {}), _row("top-1", None)], max_value=0.0, max_cost=1.0)["name"] == "top-1"  # no thief measured


def test_rows_within_noise_of_the_target_are_named():
    rows = [_row("none", {"a": 3.0}), _row("round-1", {"a": 0.9}), _row("top-2", {"a": 0.3}), _row("top-1", None)]
    rows[1]["value"]["a"]["std"] = 1.8  # standard error 1.8 / sqrt(3) = 1.04 > 0.9: may hold with more seeds
    rows[2]["value"]["a"]["std"] = 0.3  # 0.17 < 0.3: it does not
    chosen = pick(rows, max_value=0.0, max_cost=1.0)
    choice = {"chosen": chosen["name"], "rows": rows, "settings": {
        "seeds": [0, 1, 2], "max_value": 0.0, "max_cost": 1.0, "students": ["a"], "attacks": ["kd"],
        "train_fraction": 0.1, "validation": {"size": 270}}}
    assert chosen["name"] == "top-1" and undecided(choice) == ["round-1"]
    assert format_choice(choice).splitlines()[-1].startswith("Within one standard error of the target: round-1;")
    choice["chosen"] = "round-1"  # only the rows before the chosen one count
    assert undecided(choice) == []


def test_choose_measures_on_validation_and_writes_what_to_serve(tmp_path):
    from click.testing import CliRunner

    from nasty.app.cli import main
    from nasty.checkpoint import load_model
    from nasty.data import load_dataset
    from nasty.trainer import evaluate

    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])  # noqa: E731
    assert run("train", "--arch", "tiny-cnn", "--epochs", 2, "--out", tmp_path / "n", "-q").exit_code == 0
    args = ["choose", "--teacher", tmp_path / "n", "--train-fraction", 0.3, "--attacks", "kd", "--students", "tiny-cnn",
            "--seeds", 2, "--student-steps", 30, "--out", tmp_path / "c", "--device", "cpu", "-q"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    choice = json.loads((tmp_path / "c" / "choice.json").read_text())
    names = [row["name"] for row in choice["rows"]]
    assert names == ["none", "round-1", "top-2", "top-2+round-1", "top-1"] and choice["chosen"] in names
    assert f"Chosen: **{choice['chosen']}**" in r.output and (tmp_path / "c" / "choice.md").exists()
    # every number is of the validation split: the undefended row's accuracy is the teacher's there, not on test
    _, val = load_dataset("digits").split_validation(0.2, seed=0)
    assert choice["settings"]["validation"]["size"] == len(val.test_y)
    teacher, _ = load_model(tmp_path / "n")
    assert choice["rows"][0]["accuracy"] == pytest.approx(evaluate(teacher, val, device=torch.device("cpu"))["accuracy"],
                                                          abs=1e-3)
    for row in choice["rows"][:-1]:  # each candidate measured: its outputs' value for the student
        assert set(row["value"]) == {"tiny-cnn"} and {"mean", "std", "outputs", "labels"} <= set(row["value"]["tiny-cnn"])
    chosen = next(row for row in choice["rows"] if row["name"] == choice["chosen"])
    assert chosen["holds"]
    if choice["chosen"] == "none":
        assert choice["served"] is None and "no defence is needed" in r.output
    else:  # a run directory to serve, answering with the chosen transform
        card = json.loads((tmp_path / "c" / "candidates" / choice["chosen"] / "card.json").read_text())
        assert card["output_transform"] == chosen["transform"] and f"serve {choice['served']}" in r.output
    # resumed: the same choice from the finished cells
    assert run(*args).exit_code == 0 and json.loads((tmp_path / "c" / "choice.json").read_text())["rows"] == choice["rows"]
    # what labels alone give is written as a run when nothing else holds (an impossible target)
    r = run(*args, "--max-value", -1000)
    assert r.exit_code == 0 and "Chosen: **top-1**" in r.output, r.output
    card = json.loads((tmp_path / "c" / "candidates" / "top-1" / "card.json").read_text())
    assert card["output_transform"] == LABELS_ONLY[1]
    # a subset of the candidates; a name it does not know is one line
    r = run(*[a if a != tmp_path / "c" else tmp_path / "c2" for a in args], "--candidates", "top-2")
    assert r.exit_code == 0, r.output
    assert [row["name"] for row in json.loads((tmp_path / "c2" / "choice.json").read_text())["rows"]] == \
        ["none", "top-2", "top-1"]
    r = run(*args, "--candidates", "top-3")
    assert r.exit_code == 1 and r.output.strip().splitlines() == ["Error: --candidates: no defence 'top-3'; choose "
                                                                  "from round-1, top-2, top-2+round-1"], r.output


@pytest.mark.parametrize("kwargs,words", [
    ({"candidates": {}}, "at least one serving defence"),
    ({"candidates": {"top-1": {"name": "topk", "k": 1}}}, "is the fallback"),
    ({"candidates": {"x": {"name": "blur"}}}, "unknown transform 'blur'"),
    ({"candidates": ["round-1", "blur"]}, "no defence 'blur'; choose from round-1, top-2"),
    ({"candidates": ["top-1"]}, "is the fallback"),
    ({"validation": 1.0}, "`validation` must be a fraction"),
    ({"max_cost": -1}, "`max_cost` must be >= 0"),
    ({"teacher": "/nonexistent/run"}, "takes a run directory"),
])
def test_bad_choices_are_one_line_errors(tmp_path, kwargs, words):
    from nasty.errors import NastyError

    with pytest.raises(NastyError, match=words) as e:
        choose_defence(**{"teacher": tmp_path, "out": tmp_path / "c", **kwargs})
    assert "\n" not in str(e.value)


def test_choose_refuses_torchrun_and_names_devices(tmp_path, monkeypatch):
    from nasty.errors import NastyError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(NastyError, match="not under torchrun; spread its cells with `devices`"):
        choose_defence(teacher=tmp_path, out=tmp_path / "c")
