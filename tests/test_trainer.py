import json

import pytest
import torch

from nasty import checkpoint as ckpt
from nasty.errors import NastyError, TrainingStopped
from nasty.models import create_model
from nasty.trainer import Guard, TrainConfig, evaluate, fit, objective_for


def _net(arch="tiny-cnn", seed=0):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=10, in_chans=1)


def test_a_few_epochs_on_digits_learn(digits, tmp_path):
    m = _net("small-cnn")
    before = evaluate(m, digits, device="cpu")["accuracy"]
    card = fit(m, digits, config=TrainConfig(epochs=4, batch_size=64, lr=0.05), out=tmp_path, quiet=True,
               card={"arch": "small-cnn"})
    assert before < 30 and card["accuracy"] > 90
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["test_accuracy"] == card["accuracy"]
    assert rows[-1]["lr"] < rows[0]["lr"]  # the step schedule decayed
    assert card["status"] == "complete" and card["epoch"] == 4 and card["seconds"] > 0


def test_resume_ends_exactly_where_an_uninterrupted_run_does(digits, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, seed=3)
    straight = _net("small-cnn")
    fit(straight, digits, config=cfg, quiet=True, out=tmp_path / "a", card={"arch": "small-cnn"})
    # "crash" after 2 epochs: run a 4-epoch config but stop it by raising from the guard
    part = _net("small-cnn")

    class StopAfter2(Guard):
        def check(self, epoch, accuracy):
            if epoch + 1 == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(part, digits, config=cfg, quiet=True, out=tmp_path / "b", card={"arch": "small-cnn"},
            guard=StopAfter2(reference_accuracy=0))
    assert ckpt.read_card(tmp_path / "b")["epoch"] == 2
    resumed = _net("small-cnn", seed=99)  # different init: everything must come from the checkpoint
    card = fit(resumed, digits, config=cfg, quiet=True, out=tmp_path / "b", card={"arch": "small-cnn"}, resume=True)
    assert card["epoch"] == 4
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    rows = [json.loads(r)["epoch"] for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]


def test_resume_refuses_a_different_run(digits, tmp_path):
    fit(_net(), digits, config=TrainConfig(epochs=1, batch_size=64, lr=0.05), quiet=True, out=tmp_path)
    with pytest.raises(NastyError, match="lr=0.05, not 0.1"):
        fit(_net(), digits, config=TrainConfig(epochs=1, batch_size=64, lr=0.1), quiet=True, out=tmp_path, resume=True)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    calls = []

    def explodes_in_epoch_2(z, y, ref):  # 21 steps an epoch on digits at batch 64
        calls.append(1)
        loss, terms = objective_for("normal")(z, y, ref)
        return (loss * float("nan") if len(calls) > 30 else loss), terms

    with pytest.raises(TrainingStopped, match="diverged at epoch 2.*smaller `omega`.*last good checkpoint"):
        fit(_net(), digits, config=TrainConfig(epochs=3, batch_size=64, lr=0.05), quiet=True, out=tmp_path,
            objective=explodes_in_epoch_2, divergence_hint="try a smaller `omega`", card={"arch": "tiny-cnn"})
    assert len(calls) <= 21 + 26  # stopped within the epoch, not at its end
    assert ckpt.read_card(tmp_path)["epoch"] == 1
    loaded, _ = ckpt.load_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in loaded.state_dict().values() if p.is_floating_point())


def test_collapse_guard_stops_an_oversized_omega(digits, tmp_path):
    adversary = _net("small-cnn")
    fit(adversary, digits, config=TrainConfig(epochs=3, batch_size=64, lr=0.05), quiet=True)
    adv_acc = evaluate(adversary, digits, device="cpu")["accuracy"]
    guard = Guard(reference_accuracy=adv_acc, margin=20, start=2, chance=10.0, early_start=2, hint="try a smaller `omega`")
    with pytest.raises(TrainingStopped, match="collapsed at epoch 2.*smaller `omega`"):
        fit(_net("small-cnn", seed=1), digits, config=TrainConfig(epochs=4, batch_size=64, lr=0.05), quiet=True,
            objective=objective_for("nasty", omega=1.0, tau=4.0), reference=adversary, eval_tau=4.0, guard=guard,
            out=tmp_path)
    assert ckpt.read_card(tmp_path)["epoch"] == 1  # the epoch before the collapse is kept


def test_reference_is_frozen_and_left_in_eval(digits):
    ref = _net("small-cnn")
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    fit(_net(), digits, config=TrainConfig(epochs=1, batch_size=64, lr=0.05), quiet=True,
        objective=objective_for("kd", alpha=0.9, tau=4.0), reference=ref, eval_tau=4.0)
    assert not ref.training
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())  # BN running stats untouched too


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0)])
def test_a_config_out_of_range_names_the_keyword(field, value):
    with pytest.raises(NastyError, match=f"^`{field}` must be positive, got {value}$"):
        TrainConfig(**{"epochs": 1, "batch_size": 8, "lr": 0.1, field: value}).check()
