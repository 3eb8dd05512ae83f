"""`nasty harden --select value`: the budgeted search picks by the best-response value beyond labels."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main
from nasty.errors import NastyError
from nasty.search import Budget, _beyond_labels

SMALL = ["--arch", "tiny-cnn", "--epochs", "3", "--device", "cpu"]


def test_the_value_is_the_best_output_probe_less_the_best_labels_only_probe():
    row = _beyond_labels({"probe_scratch": 90.0, "probe_label_smoothing": 91.5}, {"kd-tau4": 92.0, "kd-tau1": 93.0},
                         top1=92.5)
    assert row["value"] == pytest.approx(0.5) and row["best_outputs"] == "kd-tau1" and row["best_labels"] == "top1-thief"
    assert row["probes"] == {"kd-tau4": 92.0, "kd-tau1": 93.0, "scratch": 90.0, "label-smoothing": 91.5,
                             "top1-thief": 92.5}
    with pytest.raises(NastyError, match="`select` must be damage or value"):
        Budget(select="best").check()


def test_the_search_by_value_records_every_probe(tmp_path):
    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])  # noqa: E731
    assert run("train", *SMALL, "--quiet", "--out", tmp_path / "normal").exit_code == 0
    result = run("harden", "--teacher", tmp_path / "normal", *SMALL, "--max-cost", 5, "--max-trials", 1,
                 "--probe", "mlp", "--select", "value", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output
    sr = ckpt.read_card(tmp_path / "v")["search"]
    assert sr["budget"]["select"] == "value" and sr["baseline"]["probe_label_smoothing"] > 0
    t = sr["trials"][0]
    assert set(t["probes"]) == {"kd-tau4", "kd-tau1", "scratch", "label-smoothing", "top1-thief"}
    outputs = max(t["probes"][k] for k in ("kd-tau4", "kd-tau1"))
    labels = max(t["probes"][k] for k in ("scratch", "label-smoothing", "top1-thief"))
    assert t["value"] == pytest.approx(outputs - labels, abs=1e-3) and sr["chosen"] == 0
    assert "outputs adding" in result.output
    bad = run("harden", "--teacher", tmp_path / "normal", *SMALL, "--select", "most", "--out", tmp_path / "x")
    assert bad.exit_code != 0 and "Invalid value for '--select'" in bad.output
