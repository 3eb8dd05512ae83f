"""`nasty harden --method cmim`: a fixed weight, the budgeted search over it, its card, clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main
from nasty.defences import defence_of

SMALL = ["--arch", "tiny-cnn", "--epochs", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmim")
    code = CliRunner().invoke(main, ["train", *SMALL, "--quiet", "--out", str(root / "normal")])
    assert code.exit_code == 0, code.output
    return root / "normal"


def _harden(released, out, *extra):
    return CliRunner().invoke(main, ["harden", "--teacher", str(released), *SMALL, "--out", str(out), *extra])


def test_a_fixed_cmi_weight_hardens_and_the_card_records_the_method(released, tmp_path):
    result = _harden(released, tmp_path / "c", "--method", "cmim", "--cmi-weight", "5")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("cmim teacher tiny-cnn on digits")
    card = ckpt.read_card(tmp_path / "c")
    assert card["method"] == "cmim" and card["cmi_weight"] == 5.0 and "omega" not in card
    assert card["kind"] == "nasty" and card["status"] == "complete" and defence_of(card) == "cmim weight 5"
    rows = (tmp_path / "c" / ckpt.METRICS).read_text().splitlines()
    assert len(rows) == 3 and '"train_cmi"' in rows[0]
    # the same folder with the other method is another run: refused in one line
    again = _harden(released, tmp_path / "c", "--omega", "0.05", "--resume")
    assert again.exit_code == 1 and len(again.output.strip().splitlines()) == 1 and "--resume" in again.output


def test_the_budgeted_search_climbs_the_cmi_weight(released, tmp_path):
    result = _harden(released, tmp_path / "s", "--method", "cmim", "--max-cost", "5", "--max-trials", "2",
                     "--probe", "mlp")
    assert result.exit_code == 0, result.output
    card = ckpt.read_card(tmp_path / "s")
    sr = card["search"]
    assert sr["method"] == "cmim" and sr["strength_name"] == "cmi_weight" and len(sr["trials"]) == 2
    assert [t["cmi_weight"] for t in sr["trials"]][0] == 10.0 and all(t["method"] == "cmim" for t in sr["trials"])
    assert card["cmi_weight"] == sr["cmi_weight"] == sr["strength"] and card["method"] == "cmim"
    assert "chose cmi_weight" in result.output


@pytest.mark.parametrize("extra, said", [
    (["--method", "cmim", "--omega", "0.1"], "--omega is the strength of --method nasty, not of cmim"),
    (["--cmi-weight", "3"], "--cmi-weight is the strength of --method cmim, not of nasty"),
    (["--method", "cmim", "--cmi-weight", "3", "--max-cost", "1"], "either --cmi-weight"),
    (["--method", "cmi"], "Invalid value for '--method'"),
])
def test_one_methods_option_with_another_is_one_line(released, tmp_path, extra, said):
    result = _harden(released, tmp_path / "x", *extra)
    assert result.exit_code != 0 and said in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1
    assert not (tmp_path / "x").exists()


def test_the_library_refuses_an_unknown_method(released, tmp_path):
    from nasty.errors import NastyError
    from nasty.runs import harden

    with pytest.raises(NastyError, match="`method` must be one of nasty, cmim"):
        harden(teacher=released, method="bogus", out=tmp_path / "x", quiet=True, device="cpu")
