"""Output transforms (serving-time defences): hand-computed outputs, argmax, card round trip, errors."""

import math

import pytest
import torch

from nasty.defences import Defended, create_transform, describe
from nasty.errors import NastyError


def test_topk_keeps_the_k_largest_and_puts_the_rest_far_below():
    z = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = create_transform({"name": "topk", "k": 2})(z)
    assert torch.equal(out, torch.tensor([[-998.0, 3.0, 2.0, -998.0]]))
    p = out.softmax(-1)
    assert p[0, 0] == 0 and p[0, 3] == 0 and math.isclose(float(p[0, 1]), 1 / (1 + math.exp(-1)), rel_tol=1e-6)


def test_temperature_and_round_by_hand():
    z = torch.tensor([[2.0, -4.0]])
    assert torch.equal(create_transform({"name": "temperature", "t": 2.0})(z), torch.tensor([[1.0, -2.0]]))
    z = torch.tensor([[0.5, 0.3, 0.2]]).log()
    out = create_transform({"name": "round", "decimals": 1})(z)
    assert torch.allclose(out.exp(), torch.tensor([[0.5, 0.3, 0.2]]), atol=1e-6)
    z = torch.tensor([[0.996, 0.002, 0.002]]).log()  # rounded to 2 places: 1.00, 0.00, 0.00 (zeros floored)
    out = create_transform({"name": "round", "decimals": 2})(z)
    assert torch.allclose(out.exp(), torch.tensor([[1.0, 1e-12, 1e-12]]))


def test_reverse_sigmoid_by_hand():
    p = [0.7, 0.2, 0.1]
    beta, gamma = 0.5, 2.0
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    pert = [max(0.0, q - beta * (sig(gamma * math.log(q / (1 - q))) - 0.5)) for q in p]
    want = [q / sum(pert) for q in pert]
    out = create_transform({"name": "reverse-sigmoid", "beta": beta, "gamma": gamma})(torch.tensor([p]).log())
    assert torch.allclose(out.exp(), torch.tensor([want]), atol=1e-5)


def test_argmax_kept_where_promised():
    z = torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 3
    for spec in ({"name": "topk", "k": 1}, {"name": "topk", "k": 3}, {"name": "temperature", "t": 0.3}):
        t = create_transform(spec)
        assert t.keeps_argmax and torch.equal(t(z).argmax(-1), z.argmax(-1)), spec


def test_spec_round_trips_and_describes():
    for spec in ({"name": "topk", "k": 2}, {"name": "reverse-sigmoid", "beta": 0.3, "gamma": 0.2},
                 {"name": "round", "decimals": 3}, {"name": "temperature", "t": 4.0}):
        assert create_transform(spec).spec() == spec
        assert create_transform(create_transform(spec).spec()).spec() == spec
    assert describe({"name": "topk", "k": 2}) == "topk k=2" and describe(None) == "none"
    assert create_transform(None) is None


def test_chain_applies_its_steps_in_order():
    z = torch.tensor([[3.0, 2.5, 0.0, 1.0]])
    spec = {"name": "chain", "steps": [{"name": "topk", "k": 2}, {"name": "round", "decimals": 1}]}
    chain = create_transform(spec)
    by_hand = create_transform(spec["steps"][1])(create_transform(spec["steps"][0])(z))
    assert torch.equal(chain(z), by_hand)
    assert torch.allclose(chain(z).exp(), torch.tensor([[0.6, 0.4, 1e-12, 1e-12]]))  # 0.62, 0.38 of the top two
    assert chain.spec() == spec and create_transform(chain.spec()).spec() == spec
    assert describe(spec) == "topk k=2 then round decimals=1" and not chain.keeps_argmax
    assert create_transform({"name": "chain", "steps": [{"name": "temperature", "t": 2.0},
                                                        {"name": "topk", "k": 1}]}).keeps_argmax


@pytest.mark.parametrize("spec, words", [
    ({"name": "chain", "steps": [{"name": "topk", "k": 2}]}, "at least 2 transforms"),
    ({"name": "chain", "steps": "topk"}, "at least 2 transforms"),
    ({"name": "chain", "steps": [{"name": "chain", "steps": []}, {"name": "topk", "k": 1}]}, "cannot itself be a chain"),
    ({"name": "chain", "steps": [{"name": "topk", "k": 0}, {"name": "round"}]}, "k must be a whole number"),
    ({"name": "chain", "steps": [None, {"name": "round"}]}, "every step must be a transform"),
    ({"name": "chain", "steps": [3, {"name": "round"}]}, "an object with a 'name'"),
    ("topk", "an object with a 'name'"),
    ({"k": 2}, "an object with a 'name'"),
    ({"name": "blur"}, "unknown transform 'blur'"),
    ({"name": "topk", "k": 0}, "k must be a whole number"),
    ({"name": "topk", "k": 1.5}, "k must be a whole number"),
    ({"name": "topk", "k": 2, "extra": 1}, "no setting 'extra'"),
    ({"name": "reverse-sigmoid", "beta": float("nan")}, "beta must be a finite number"),
    ({"name": "round", "decimals": 99}, "decimals must be a whole number in 0..8"),
    ({"name": "temperature", "t": -1}, "t must be a finite number > 0"),
])
def test_malformed_transforms_are_one_line_errors(spec, words):
    with pytest.raises(NastyError, match=words) as e:
        create_transform(spec)
    assert "\n" not in str(e.value)


def test_defended_passes_features_through_and_transforms_answers():
    from nasty.models import create_model

    torch.manual_seed(0)
    net = create_model("tiny-cnn", num_classes=10, in_chans=1).eval()
    d = Defended(net, create_transform({"name": "topk", "k": 1})).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(d.forward_features(x), net.forward_features(x))
    assert torch.equal(d(x).argmax(-1), net(x).argmax(-1)) and (d(x).softmax(-1).max(-1).values == 1).all()
    assert torch.equal(d.forward_head(d.forward_features(x)), d(x)) and d.num_features == net.num_features


def test_defend_then_export_serves_what_load_model_answers(tmp_path):
    import json

    from click.testing import CliRunner

    from nasty.checkpoint import load_model
    from nasty.app.cli import main
    from nasty.data import load_dataset
    from nasty.export import load_exported

    run = lambda *a: CliRunner().invoke(main, [str(v) for v in a])  # noqa: E731
    assert run("train", "--arch", "tiny-cnn", "--epochs", 1, "--out", tmp_path / "n", "-q").exit_code == 0
    r = run("defend", "--teacher", tmp_path / "n", "--topk", 2, "--out", tmp_path / "k2")
    assert r.exit_code == 0 and "served with topk k=2" in r.output, r.output
    card = json.loads((tmp_path / "k2" / "card.json").read_text())
    assert card["output_transform"] == {"name": "topk", "k": 2} and card["defence"] == "topk k=2"
    assert card["sha256"] == json.loads((tmp_path / "n" / "card.json").read_text())["sha256"]  # the same weights
    model, _ = load_model(tmp_path / "k2")
    bare, _ = load_model(tmp_path / "n")
    x, _ = next(load_dataset("digits").batches("test", batch_size=450))
    with torch.no_grad():
        served, plain = model(x), bare(x)
    assert torch.equal(served.argmax(-1), plain.argmax(-1)) and ((served.softmax(-1) > 0).sum(-1) <= 2).all()
    r = run("export", "--teacher", tmp_path / "k2", "--out", tmp_path / "k2.pt2")
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        assert torch.allclose(load_exported(tmp_path / "k2.pt2")(x), served, atol=1e-5)
    try:  # the ONNX extra (pip install -e '.[onnx]'): the same answers through onnxruntime
        import numpy as np
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        pass
    else:
        r = run("export", "--teacher", tmp_path / "k2", "--out", tmp_path / "k2.onnx")
        assert r.exit_code == 0, r.output
        session = onnxruntime.InferenceSession(str(tmp_path / "k2.onnx"), providers=["CPUExecutionProvider"])
        (answer,) = session.run(None, {"x": x.numpy()})
        assert np.allclose(answer, served.numpy(), atol=1e-5)
    # options stack: the top two, rounded to one decimal (applied in that order, whatever the order given)
    r = run("defend", "--teacher", tmp_path / "n", "--round", 1, "--topk", 2, "--out", tmp_path / "k2r")
    assert r.exit_code == 0 and "served with topk k=2 then round decimals=1" in r.output, r.output
    stacked, _ = load_model(tmp_path / "k2r")
    with torch.no_grad():
        p = stacked(x).exp()
    assert ((p > 0.01).sum(-1) <= 2).all() and torch.allclose(p * 10, (p * 10).round(), atol=1e-4)
    r = run("defend", "--teacher", tmp_path / "n", "--out", tmp_path / "none")
    assert r.exit_code == 2 and "at least one of --topk" in r.output
    # a card with a transform this version does not know is one line, not a traceback
    card["output_transform"] = {"name": "blur", "sigma": 2}
    (tmp_path / "k2" / "card.json").write_text(json.dumps(card))
    r = run("export", "--teacher", tmp_path / "k2", "--out", tmp_path / "b.pt2")
    assert r.exit_code == 1 and "unknown transform 'blur'" in r.output and len(r.output.strip().splitlines()) == 1
