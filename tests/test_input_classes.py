"""Issue 33: each class of bad input, generated (hypothesis), meets its mechanism: a clear one-line
error, a warning, or work that goes on; never a traceback, never lost work. One test per class,
numbered as in the issue."""

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nasty.app.cli import main
from nasty.errors import CheckpointError, Diverged, NastyError, NastyWarning

FEW = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SOME = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
ANY = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**15), 10**15) | st.booleans()
       | st.text(max_size=5) | st.sampled_from([float("nan"), float("inf"), -1, 0, 0.5, 2.5, 5, 1e308, -1e-300]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small digits run (mlp, 2 epochs): good enough to be hurt by a defence."""
    from nasty.runs import train

    root = tmp_path_factory.mktemp("classes")
    train(dataset="digits", arch="mlp", epochs=2, out=root / "normal", quiet=True, device="cpu")
    return root / "normal"


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output and isinstance(res.exception, (SystemExit, type(None))), \
        (args, res.output, res.exception)
    return res


def one_error_line(res) -> str:
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, res.output
    assert not re.findall(r"`[a-z][a-z0-9_]*`", res.output), res.output  # every keyword is this command's flag
    return lines[0]


# 1 ---------------------------------------------------------------------------------------------------------


@FEW
@given(transform=st.one_of(
    st.builds(lambda b: {"name": "reverse-sigmoid", "beta": b, "gamma": 0.1}, st.floats(0, 10)),
    st.builds(lambda t: {"name": "temperature", "t": t}, st.sampled_from([1e-30, 0.5, 100.0])),
    st.builds(lambda k: {"name": "topk", "k": k}, st.integers(1, 10)),
    st.builds(lambda d: {"name": "round", "decimals": d}, st.integers(0, 8))))
def test_1_a_defended_card_states_the_served_accuracy(run, tmp_path_factory, transform):
    from nasty.checkpoint import load_model
    from nasty.data import load_dataset
    from nasty.runs import defend
    from nasty.trainer import evaluate

    out = tmp_path_factory.mktemp("defended") / "d"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        card = defend(teacher=run, transform=transform, out=out)
    served, _ = load_model(out)
    assert card["accuracy"] == pytest.approx(evaluate(served, load_dataset("digits"), device="cpu")["accuracy"], abs=1e-3)
    assert json.loads((out / "card.json").read_text())["accuracy"] == card["accuracy"]
    cost = card["accuracy_unserved"] - card["accuracy"]
    warned = [w for w in said if issubclass(w.category, NastyWarning) and "more than the budget" in str(w.message)]
    assert bool(warned) == (cost > 1.0), (cost, [str(w.message) for w in said])


def test_1_defend_warns_in_one_line_through_the_cli(run, tmp_path):
    res = cli("defend", "--teacher", run, "--reverse-sigmoid", 5, "--out", tmp_path / "rs")
    assert res.exit_code == 0
    assert sum(line.startswith("warning: the defence reverse-sigmoid") for line in res.output.splitlines()) == 1


# 2, 3 -------------------------------------------------------------------------------------------------------


def _options_strategy():
    from attacks import ATTACKS
    from attacks.options import SCHEMAS

    return st.sampled_from(sorted(ATTACKS)).flatmap(
        lambda name: st.tuples(st.just(name), st.dictionaries(st.sampled_from(sorted(SCHEMAS[name].model_fields) or ["x"]),
                                                              ANY | st.integers(0, 50) | st.floats(0, 3),
                                                              min_size=1, max_size=3)))


@SOME
@given(chosen=_options_strategy())
def test_2_3_every_attack_option_meets_one_schema_before_anything_is_loaded(chosen, tmp_path_factory):
    """An option is refused in one line, or builds its attack; the audit refuses it before any
    file is read (the teacher here does not exist): nothing trains with a bad option."""
    from attacks import create_attack
    from attacks.audit import _check_settings

    name, options = chosen
    try:
        _, _, checked = _check_settings([name], attack_options={name: options}, alpha=0.9, tau=4.0, seeds=[0],
                                        checkpoint_seconds=0)
    except NastyError as e:
        assert str(e).isprintable() and name in str(e) and "args, kwargs" not in str(e)
        return
    attack = create_attack(name, **{"alpha": 0.9, "tau": 4.0, **checked[name]})
    for v in attack.settings().values():  # every number the attack holds is finite
        for x in v if isinstance(v, list) else [v]:
            assert not isinstance(x, float) or math.isfinite(x)


@FEW
@given(item=st.sampled_from(["kd.alpha=5", "kd.tau=-1", "kd.tau=nan", "kd-topk.k=2.5", "kd-sweep.search_epochs=inf",
                             "deepinversion.pool_size=1e12", "dafl.latent=-3", "skeptical.delay=0.5",
                             "kd-sweep.taus=0", "kd-sweep.match_steps=2"]))
def test_3_bad_attack_options_fail_before_any_file_is_read(item, tmp_path_factory):
    d = tmp_path_factory.mktemp("opt")
    res = cli("audit", "--teacher", d / "missing", "--reference", d / "missing", "--out", d / "a",
              "--attacks", "all", "--attack-option", item)
    line = one_error_line(res)
    assert res.exit_code == 1 and f"--attack-option {item.split('=')[0]} must be" in line, line


@SOME
@given(key=st.sampled_from(["mean", "std"]), value=ANY, toml=st.booleans())
def test_2_a_model_card_value_meets_the_checks_of_its_flag(key, value, toml, tmp_path_factory):
    """A value refused as --mean/--std is refused in a JSON or TOML card, and a card's accepted
    value gives a normalisation every card then records."""
    from nasty.released import parse_normalization, read_model_card
    from nasty.schema import Normalization, validate

    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("fuzz_", Path(__file__).resolve().parents[1] / "bench" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    stated = {"mean": 0.5, "std": 0.5, key: value}
    path = tmp_path_factory.mktemp("card") / ("c.toml" if toml else "c.json")
    path.write_text("\n".join(f"{k} = {fuzz._toml(v)}" for k, v in stated.items()) if toml else json.dumps(stated))
    try:
        card = read_model_card(path)
        validate(Normalization, parse_normalization(mean=card["mean"], std=card["std"]), "normalization")
        card_ok = True
    except NastyError as e:
        assert str(e).isprintable()
        card_ok = False
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # the flag's text: the same verdict
        try:
            parse_normalization(**{"mean": "0.5", "std": "0.5", key: repr(value)})
            flag_ok = True
        except NastyError:
            flag_ok = False
        assert card_ok == flag_ok, (key, value, toml)


# 4 ---------------------------------------------------------------------------------------------------------


@FEW
@given(n=st.integers(1_001, 10**12))
def test_4_counts_are_bounded_before_anything_is_allocated(n, tmp_path_factory):
    import time

    d = tmp_path_factory.mktemp("counts")
    t0 = time.perf_counter()
    res = cli("audit", "--teacher", d / "t", "--reference", d / "r", "--out", d / "a", "--seeds", n)
    assert res.exit_code == 2 and "NASTY_MAX_SEEDS" in res.output, res.output
    res = cli("audit", "--teacher", d / "t", "--reference", d / "r", "--out", d / "a", "--epochs", n * 100)
    assert res.exit_code == 1 and "NASTY_MAX_EPOCHS" in one_error_line(res)
    res = cli("audit", "--teacher", d / "t", "--reference", d / "r", "--out", d / "a",
              "--students", ",".join(f"s{i}" for i in range(65)))
    assert res.exit_code == 1 and "NASTY_MAX_STUDENTS" in one_error_line(res)
    res = cli("train", "--epochs", n * 100, "--out", d / "t")
    assert res.exit_code == 1 and "NASTY_MAX_EPOCHS" in one_error_line(res)
    assert time.perf_counter() - t0 < 60


# 5 ---------------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["constant", "one-hot", "saturated", "tiny", "non-finite", "two"]),
       n=st.integers(1, 60), width=st.integers(1, 12), seed=st.integers(0, 3))
def test_5_tsne_lays_out_any_output(kind, n, width, seed):
    from nasty.diagnostics import embed

    rng = np.random.default_rng(seed)
    a = {"constant": np.full((n, width), 3.0), "one-hot": np.eye(width)[rng.integers(0, width, n)] * 1e30,
         "saturated": rng.normal(size=(n, width)) * 1e31, "tiny": rng.normal(size=(n, width)) * 1e-300,
         "non-finite": np.where(rng.random((n, width)) < 0.3, np.inf, rng.normal(size=(n, width))),
         "two": np.eye(width)[rng.integers(0, min(2, width), n)]}[kind].astype(np.float32)
    emb = embed(a, seed=seed)
    assert emb is None or (emb.shape == (n, 2) and np.isfinite(emb).all())


class _Constant(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 10) + 1e30


def test_5_a_failing_figure_costs_the_report_that_figure(digits, monkeypatch):
    from nasty import diagnostics

    fig = diagnostics.plot_tsne({"served": _Constant()}, digits, limit=50)  # every output the same: says so
    assert fig is not None
    monkeypatch.setattr(diagnostics, "plot_tsne", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom\nsecond")))
    with pytest.warns(NastyWarning, match="without its tsne figure"):
        figures = diagnostics.audit_figures({"served": _Constant()}, digits, tau=4.0)
    assert set(figures) == {"logits"}


# 6 ---------------------------------------------------------------------------------------------------------


@FEW
@given(name=st.text(alphabet="abcXYZ_-", min_size=256, max_size=400))
def test_6_paths_the_os_refuses_are_one_line(run, name, tmp_path_factory):
    d = tmp_path_factory.mktemp("os")
    for args in (["train", "--epochs", 1, "--arch", "mlp", "--out", d / name],
                 ["defend", "--teacher", run, "--topk", 2, "--out", d / name],
                 ["export", "--teacher", run, "--out", d / f"{name}.pt2"],
                 ["plot", "logits", "--teacher", run, "--out", d / f"{name}.png"]):
        res = cli(*args)
        assert res.exit_code == 1 and "name too long" in one_error_line(res), (args[0], res.output)


# 7 ---------------------------------------------------------------------------------------------------------


class _Needs(nn.Module):
    """A model that takes inputs of at least ``side`` pixels (a kernel of that size), or exactly ``side``."""

    def __init__(self, side: int, exact: bool):
        super().__init__()
        self.side, self.exact = side, exact
        self.conv = nn.Conv2d(1, 2, side)

    def forward(self, x):
        if self.exact:
            torch._assert(x.shape[-1] == self.side, f"Wrong image height! Expected {self.side} but got {x.shape[-1]}!")
        return self.conv(x).mean((2, 3))


@SOME
@given(side=st.integers(9, 200), given_side=st.integers(8, 64), exact=st.booleans())
def test_7_an_input_size_the_architecture_cannot_take_names_the_one_it_takes(side, given_side, exact):
    from nasty.errors import ModelError
    from nasty.released import probe_input

    model = _Needs(side, exact)
    fits = given_side == side if exact else given_side >= side
    if fits:
        probe_input(model, (1, given_side, given_side), name="m")
        return
    with pytest.raises(ModelError, match=f"takes {'exactly' if exact else 'at least'} {side} px"):
        probe_input(model, (1, given_side, given_side), name="m")


def test_7_import_of_inception_at_32_px_is_one_line(tmp_path):
    from nasty.models import create_model

    torch.save(create_model("tv:inception_v3", num_classes=10, in_chans=3).state_dict(), tmp_path / "inc.pt")
    res = cli("import", "--weights", tmp_path / "inc.pt", "--arch", "tv:inception_v3", "--dataset", "digits",
              "--input-size", 32, "--channels", 3, "--normalization", "unit", "--out", tmp_path / "i")
    assert res.exit_code == 1 and "takes at least 75 px; pass --input-size" in one_error_line(res)


# 8 ---------------------------------------------------------------------------------------------------------


@SOME
@given(bad=st.sampled_from(["int-key", "tuple-key", "empty-key", "sparse", "meta", "nested", "list", "number",
                            "quantized", "inner-nested"]), position=st.integers(0, 5))
def test_8_weights_that_are_not_plain_state_dicts_are_one_line(run, bad, position, tmp_path_factory):
    from nasty import checkpoint as ckpt

    sd = dict(ckpt.load_weights(run)[0])
    keys = list(sd)
    k = keys[position % len(keys)]
    entry = {"int-key": (7, torch.zeros(2)), "tuple-key": (("a", 1), torch.zeros(2)), "empty-key": ("", torch.zeros(2)),
             "sparse": (k, sd[k].to_sparse()), "meta": (k, torch.zeros(2, device="meta")),
             "nested": (k, {"w": sd[k]}), "list": (k, [sd[k]]), "number": (k, 3.0),
             "quantized": (k, torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8)),
             "inner-nested": ("state_dict", {"a": {"b": torch.zeros(1)}})}[bad]
    items = [(key, v) for key, v in sd.items() if key != entry[0]]
    items.insert(position % len(items), entry)
    obj = dict(items) if bad != "inner-nested" else {"state_dict": {**sd, "x": {"b": torch.zeros(1)}}}
    path = tmp_path_factory.mktemp("w") / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_weights(path)
    text = str(e.value)
    assert text.isprintable() and str(path) in text and "entry" in text, text


# 9 ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, target, advice", [
    (["train", "--epochs", 1], "nasty.runs.train", "--resume"),
    (["audit", "--teacher", "t", "--reference", "r"], "attacks.audit.audit", "run the same command again"),
    (["compare", "--reference", "r", "--teachers", "t"], "attacks.compare.compare", "run the same command again"),
    (["import", "--weights", "w"], "nasty.runs.import_weights", "nothing was left half-written"),
])
def test_9_ctrl_c_says_how_this_command_goes_on(command, target, advice, monkeypatch, tmp_path):
    import importlib

    module, _, fn = target.rpartition(".")

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), fn, interrupted)
    res = cli(*command, "--out", tmp_path / "o")
    assert res.exit_code == 130 and advice in res.output and ("--resume" in res.output) == (advice == "--resume")


def test_9_an_interrupted_audit_leaves_a_report_that_says_it_is_partial(run, tmp_path, monkeypatch):
    from attacks import audit as audit_module

    real, calls = audit_module._train_cells, []

    def killed_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(audit_module, "_train_cells", killed_at_the_third)
    res = cli("audit", "--teacher", run, "--reference", run, "--out", tmp_path / "a", "--attacks", "kd",
              "--seeds", "0,", "--epochs", 1, "--students", "mlp", "--no-plots", "--device", "cpu", "-q")
    assert res.exit_code == 130 and "run the same command again" in res.output
    assert "PARTIAL REPORT: 2 of 3 cells done" in (tmp_path / "a" / "report.md").read_text()
    assert json.loads((tmp_path / "a" / "report.json").read_text())["cells"] == {"done": 2, "total": 3, "failed": 0}


# 10 --------------------------------------------------------------------------------------------------------


@FEW
@given(epoch=st.integers(0, 29), status=st.sampled_from(["running", "complete"]))
def test_10_an_unfinished_run_is_said(run, epoch, status):
    from nasty.released import read_model

    card = json.loads((run / "card.json").read_text())
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        from unittest import mock

        with mock.patch("nasty.checkpoint.read_card", return_value={**card, "epoch": epoch, "epochs": 30,
                                                                     "status": status, "sha256": card["sha256"]}):
            read_model(run)
    assert any("unfinished run" in str(w.message) and f"epoch {epoch} of 30" in str(w.message) for w in said)


@SOME
@given(content=st.one_of(st.just(None), st.text(max_size=40), st.dictionaries(st.text(max_size=8), st.integers(),
                                                                             max_size=3)),
       names=st.sets(st.sampled_from(["report.json", "report.md", "report.html"]), min_size=1))
def test_10_audit_never_replaces_a_users_own_report(content, names, tmp_path_factory):
    from attacks.progress import check_out

    out = tmp_path_factory.mktemp("out")
    for name in names:
        (out / name).write_text(json.dumps(content) if name == "report.json" and content is not None else "mine")
    with pytest.raises(NastyError, match="that no audit wrote"):
        check_out(out, force=False)
    check_out(out, force=True)
    (out / "report.json").write_text(json.dumps({"teachers": {}, "summary": [], "settings": {}, "runs": []}))
    check_out(out, force=False)  # an audit's own report: rewritten


def test_10_messages_name_only_this_commands_flags(run, tmp_path):
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(run, tampered)
    with open(tampered / "model.safetensors", "ab") as f:
        f.write(b"\0")
    other = tmp_path / "other-arch"
    shutil.copytree(run, other)
    card = json.loads((other / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "arch": "tiny-cnn"}))
    for args, words in [(["plot", "logits", "--teacher", tampered, "--out", tmp_path / "p.png"], "sha256"),
                        (["defend", "--teacher", tampered, "--topk", 2, "--out", tmp_path / "d"], "sha256"),
                        (["defend", "--teacher", other, "--topk", 2, "--out", tmp_path / "d2"], "do not fit"),
                        (["compare", "--reference", run, "--teachers", tmp_path / "nope", "--out", tmp_path / "c"],
                         "--teachers")]:
        res = cli(*args)
        assert res.exit_code == 1 and words in one_error_line(res), res.output


# 11 --------------------------------------------------------------------------------------------------------


@FEW
@given(diverging=st.sets(st.integers(0, 3), max_size=4))
def test_11_a_diverging_candidate_is_a_failed_candidate(run, digits, diverging, monkeypatch):
    from dataclasses import replace

    from attacks import kd_sweep
    from nasty.checkpoint import load_model
    from nasty.trainer import TrainConfig

    teacher, _ = load_model(run)
    pairs = [(t, a) for t in (1.0, 4.0) for a in (0.5, 0.9)]
    real = kd_sweep._Candidates.losses

    def losses(self, ctx, *a, **k):
        out = real(self, ctx, *a, **k)
        return {"loss": out["loss"] * float("nan")} if pairs.index(tuple(ctx)) in diverging else out

    sweep = kd_sweep.KDSweep(taus=(1.0, 4.0), alphas=(0.5, 0.9), search_epochs=1, search_steps=0, val_images=0)
    cfg = replace(TrainConfig(epochs=1, batch_size=64, lr=0.05), seed=0)
    with monkeypatch.context() as m:  # each example its own patch
        m.setattr(kd_sweep._Candidates, "losses", losses)
        if len(diverging) == 4:
            with pytest.raises(Diverged, match="every candidate"):
                sweep.select(teacher, digits.subset(0.2), archs=["mlp"], config=cfg, device="cpu")
            return
        pick = sweep.select(teacher, digits.subset(0.2), archs=["mlp"], config=cfg, device="cpu")["mlp"]
    assert [bool(r.get("diverged")) for r in pick["tried"]] == [i in diverging for i in range(4)]
    assert (pick["tau"], pick["alpha"]) in [p for i, p in enumerate(pairs) if i not in diverging]


def test_11_a_thief_that_fails_altogether_costs_the_report_nothing(run, tmp_path, monkeypatch):
    from attacks.kd import KD

    monkeypatch.setattr(KD, "loss", lambda self, z, t, y: (z.sum() * float("nan"), {}))
    res = cli("audit", "--teacher", run, "--reference", run, "--out", tmp_path / "a", "--attacks", "kd,hard-label",
              "--seeds", "0,", "--epochs", 1, "--students", "mlp", "--no-plots", "--device", "cpu", "-q")
    line = one_error_line(res)
    assert res.exit_code == 1 and "1 cell(s) failed (kd-seed0)" in line and "--tau" in line, res.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [r["attack"] for r in report["summary"]] == ["hard-label"] and report["failed"][0]["cell"] == "kd-seed0"
    assert "FAILED: kd-seed0" in (tmp_path / "a" / "report.md").read_text()
    assert not (tmp_path / "a" / "cells" / "kd-seed0.json").exists()  # a rerun tries it again
