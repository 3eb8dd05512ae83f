"""Students of one architecture trained as one batched ensemble (attacks/_ensemble.py): the same
training as a loop (to float rounding), one checkpoint format, bit-identical resume on the CPU."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from attacks import create_attack
from attacks._ensemble import Ensemble
from attacks.base import batchable, graphs_for, run_cells, run_students
from attacks.baselines import Scratch
from nasty.checkpoint import load_model
from nasty.errors import NastyError
from nasty.models import create_model
from nasty.trainer import TrainConfig

CFG = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=1)
ARCHS = ["tiny-cnn", "mlp"]


@pytest.fixture(scope="module")
def pair(teachers):
    return {src: load_model(teachers["root"] / src)[0] for src in ("normal", "nasty")}


def _states(into: list):
    """A ``save`` that keeps a copy of each state (it holds the live tensors, as the audit's writes them at once)."""
    return lambda state: into.append(copy.deepcopy(state))


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]) and a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=tol, rtol=tol), (k, float((a[k] - b[k]).abs().max()), float(a[k].abs().max()))
        elif torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k


def test_a_vmapped_ensemble_is_its_members_forward_and_backward():
    """In float64: the same sums to 1e-15. (In float32, torch 2.14's CPU convolution backward
    summed the batched and the single gradients in other orders: up to 6e-3 apart on
    gradients of 2.8 in this 20-layer net.)"""
    torch.manual_seed(0)
    members = [create_model("resnetc20", num_classes=10, in_chans=1).double() for _ in range(3)]
    alone = [create_model("resnetc20", num_classes=10, in_chans=1).double() for _ in range(3)]
    for a, m in zip(alone, members):
        a.load_state_dict(m.state_dict())
    e = Ensemble(members)
    x = torch.randn(16, 1, 32, 32, dtype=torch.float64)
    z = e(x)
    z.square().sum().backward()
    ref = torch.stack([a(x) for a in alone])
    ref.square().sum().backward()
    assert z.shape == (3, 16, 10) and torch.allclose(z, ref, atol=1e-5)
    for name, stacked in e.params.items():
        grads = torch.stack([dict(a.named_parameters())[name].grad for a in alone])
        assert torch.allclose(stacked.grad, grads, atol=1e-4), name
    e.write_back()  # each member's BatchNorm kept its own running statistics
    for a, m in zip(alone, members):
        for (n, b), (_, r) in zip(m.named_buffers(), a.named_buffers()):
            assert torch.allclose(b.float(), r.float(), atol=1e-6), n
    xs = [torch.randn(8, 1, 32, 32, dtype=torch.float64) for _ in range(3)]  # a batch of its own per member
    own = e(xs)
    assert own.shape == (3, 8, 10)
    assert torch.allclose(own[2], alone[2](xs[2]), atol=1e-5)


def test_an_ensemble_of_channels_last_students_runs_in_the_default_layout():
    """Issue 16, seen on an H100: vmap's batch norm asked a channels_last tensor for its layout
    ("NYI: querying is_contiguous inside of vmap"). A 1x1 kernel stacked from channels_last members
    says it is contiguous while its strides are channels_last; the stacks and the input are made
    plainly contiguous, strides and all, and the members keep their own layout."""
    torch.manual_seed(0)
    members = [create_model("resnetc20", num_classes=10, in_chans=3).to(memory_format=torch.channels_last)
               for _ in range(2)]
    e = Ensemble(members)
    for name, t in (*e.params.items(), *e.buffers.items()):
        assert t.stride() == torch.empty(t.shape).stride(), name
    assert all(p.is_leaf and p.requires_grad for p in e.parameters())
    xs = [torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    z = e(xs)
    assert torch.allclose(z[1], members[1](xs[1]), atol=1e-5)
    z.square().mean().backward()
    e.write_back()
    assert members[0].stem.weight.is_contiguous(memory_format=torch.channels_last)


class _Cast(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


def test_an_ensembles_batch_norm_takes_a_bf16_input_under_autocast():
    """Issue 16, seen on an H100: under bf16 autocast a convolution hands BatchNorm a bf16 input while
    its running statistics stay fp32, and vmap's batch-norm backward refused that ("Expected
    running_mean to have type BFloat16 but got Float"). On the CPU, vmap's convolutions stay fp32
    under autocast, so a layer that casts stands in for them; the backward failed the same way
    before the ensemble's BatchNorm layers ran in fp32."""
    torch.manual_seed(0)

    def member():
        return nn.Sequential(nn.Linear(4, 8), _Cast(torch.bfloat16), nn.BatchNorm1d(8), _Cast(torch.float32),
                             nn.Linear(8, 3))

    e = Ensemble([member(), member()])
    seen = []
    for m in e.structure.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = e(torch.randn(16, 4))
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}, seen  # bf16 on, as it came
    z.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in e.parameters())
    assert e.buffers["2.running_mean"].dtype == torch.float32 and e.buffers["2.running_mean"].abs().sum() > 0


@pytest.mark.parametrize("name", ["kd", "kd-sweep", "dafl", "scratch"])
def test_an_ensemble_trains_the_students_a_loop_trains(name, pair, digits):
    """The same accuracies and (to float rounding) weights; real images shared, or a batch per teacher (dafl)."""
    if name == "scratch":
        attack, teachers = Scratch, {"scratch": None}
    else:
        options = {"kd-sweep": {"taus": (1.0, 4.0), "alphas": (0.9,), "search_epochs": 1, "search_steps": 0}}.get(name, {})
        attack, teachers = (lambda: create_attack(name, **options)), pair
    runs = {}
    for ensemble in (False, True):
        saved = []
        cfg = replace(CFG, epochs=2) if name == "dafl" else CFG  # its generator's steps cost most
        acc = run_students(attack(), teachers, ARCHS, digits, config=cfg, device="cpu", ensemble=ensemble,
                           save=_states(saved))
        runs[ensemble] = acc, saved[-1]
    (acc_loop, state_loop), (acc_ens, state_ens) = runs[False], runs[True]
    assert set(acc_loop) == set(acc_ens) == {(src, a) for src in teachers for a in ARCHS}
    assert max(abs(acc_loop[k] - acc_ens[k]) for k in acc_loop) <= 0.5, (acc_loop, acc_ens)
    # float32 sums in other orders drift through training: with torch 2.14's CPU kernels up to 4.3e-3 on
    # weights of 0.5 (the members' exact equality is checked in float64 above)
    _close(state_loop["students"], state_ens["students"], tol=1e-2)
    assert state_loop["scheduler"] == state_ens["scheduler"]
    loop_opt, ens_opt = state_loop["optimizer"], state_ens["optimizer"]
    assert loop_opt["param_groups"] == ens_opt["param_groups"] and loop_opt["state"].keys() == ens_opt["state"].keys()
    for i in loop_opt["state"]:
        # a momentum buffer is a running sum of gradients, which float32 order moves more than the weights:
        # 4.4% of its norm on the first convolution under torch 2.14 (cosine 0.999); a wrong member would be ~0
        a, b = (opt["state"][i]["momentum_buffer"].flatten() for opt in (loop_opt, ens_opt))
        cos, rel = float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float((a - b).norm() / b.norm())
        assert cos >= 0.99 and rel <= 0.15, (i, cos, rel)


def test_an_ensemble_resumes_bit_identically_and_from_a_loops_checkpoint(pair, digits):
    kd = lambda: create_attack("kd")  # noqa: E731
    whole, saved = [], []
    full = run_students(kd(), pair, ARCHS, digits, config=CFG, device="cpu", ensemble=True, save=_states(whole))
    again = run_students(kd(), pair, ARCHS, digits, config=CFG, device="cpu", ensemble=True, resume=whole[0],
                         save=_states(saved))
    assert again == full
    for k, t in whole[-1]["students"].items():
        assert torch.equal(t, saved[-1]["students"][k]), k
    loop_states = []
    run_students(kd(), pair, ARCHS, digits, config=CFG, device="cpu", ensemble=False, save=_states(loop_states))
    crossed = run_students(kd(), pair, ARCHS, digits, config=CFG, device="cpu", ensemble=True, resume=loop_states[0])
    assert max(abs(crossed[k] - full[k]) for k in full) <= 0.5, (crossed, full)


def test_who_trains_how(pair, digits):
    kd, skeptical = create_attack("kd"), create_attack("skeptical")
    assert batchable(kd) and batchable(create_attack("kd-sweep")) and not batchable(skeptical)
    # the whole step as one CUDA graph by default on a CUDA device only, for attacks that keep the default step
    assert graphs_for(kd, "cuda") == "step" and graphs_for(kd, "cpu") is False and graphs_for(skeptical, "cuda") is False
    with pytest.raises(NastyError, match="skeptical reads its students' features.*cannot be trained as an ensemble"):
        run_students(skeptical, pair, ARCHS, digits, config=CFG, device="cpu", ensemble=True)
    with pytest.raises(NastyError, match="CUDA graphs need a CUDA device"):
        run_students(kd, pair, ARCHS, digits, config=CFG, device="cpu", graphs=True)


def test_a_student_that_cannot_be_captured_as_cuda_graphs_trains_eagerly():
    """Capture fails here (no GPU), as it would for a model with host syncs: a one-line warning,
    and the module is left as it was (its eager forward, its BatchNorm statistics)."""
    from attacks._graphs import capture

    torch.manual_seed(0)
    model = create_model("tiny-cnn", num_classes=10, in_chans=1)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match=r"could not capture tiny-cnn as CUDA graphs \(.*\); it trains eagerly") as w:
        assert not capture(model, x, name="tiny-cnn")
    assert "\n" not in str(w[0].message)
    assert "forward" not in vars(model)  # the class's forward, not an instance's
    _close(model.state_dict(), before, 0)
    fresh = create_model("tiny-cnn", num_classes=10, in_chans=1)
    fresh.load_state_dict(before)
    assert torch.equal(model(x), fresh(x))


def test_an_ensemble_of_students_with_dropout_draws_a_mask_per_member(digits):
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)) for _ in range(2)]
    members[1].load_state_dict(members[0].state_dict())
    z = Ensemble(members)(torch.ones(4, 1, 8, 8))
    assert not torch.equal(z[0], z[1])


def test_seeds_trained_together_match_each_seed_alone_and_resume_bit_identically(pair, digits):
    kd = lambda: create_attack("kd")  # noqa: E731
    whole = []
    together = run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=True,
                         save=_states(whole))
    for seed in (0, 1):
        alone = run_students(kd(), pair, ARCHS, digits, config=replace(CFG, seed=seed), device="cpu")
        assert max(abs(alone[k] - together[seed][k]) for k in alone) <= 0.5, (seed, alone, together[seed])
    assert set(whole[0]) == {0, 1} and all(s["epoch"] == 1 for s in whole[0].values())
    again = run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=True, resume=whole[0])
    assert again == together
    mixed = {0: whole[0][0], 1: whole[1][1]}
    with pytest.raises(ValueError, match="resume from one epoch"):
        run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=True, resume=mixed)


def _audit(teachers, out, **kw):
    from attacks.audit import audit

    settings = {"attacks": ["kd"], "students": ARCHS, "seeds": (0, 1), "epochs": 2, "plots": False, "quiet": True,
                "device": "cpu", "checkpoint_seconds": 0}
    return audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=out,
                 **{**settings, **kw})


@pytest.mark.slow  # 3 audits and 2 kills (about 30 s): the default suite keeps the run_cells resume test above
def test_an_audit_trains_an_attacks_seeds_as_one_ensemble_and_resumes_it(teachers, tmp_path, monkeypatch):
    import attacks.audit as audit_mod

    loop = _audit(teachers, tmp_path / "loop", ensemble=False)
    calls = []
    real = audit_mod.run_cells

    def record(attack, *a, seeds, save=None, **k):
        calls.append((attack.name, tuple(seeds)))

        def save_then_crash(states):
            save(states)
            if attack.name == "kd" and crash:
                raise KeyboardInterrupt  # the process dies after the first epoch's partial states
        return real(attack, *a, seeds=seeds, save=save_then_crash, **k)

    monkeypatch.setattr(audit_mod, "run_cells", record)
    crash = False
    whole = _audit(teachers, tmp_path / "whole", ensemble=True)
    assert calls == [("scratch", (0, 1)), ("label-smoothing", (0, 1)), ("kd", (0, 1))]
    cell = json.loads((tmp_path / "whole" / "cells" / "kd-seed1.json").read_text())
    assert cell["trained_with_seeds"] == [0, 1]
    by_run = lambda r: {(x["attack"], x["student"], x["source"], x["seed"]): x["accuracy"] for x in r["runs"]}  # noqa: E731
    a, b = by_run(loop), by_run(whole)
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 1.0, (a, b)

    crash = True
    with pytest.raises(KeyboardInterrupt):
        _audit(teachers, tmp_path / "killed", ensemble=True)
    cells = tmp_path / "killed" / "cells"
    assert (cells / "kd-seed0.partial.pt").exists() and (cells / "kd-seed1.partial.pt").exists()
    crash = False
    calls.clear()
    resumed = _audit(teachers, tmp_path / "killed", ensemble=True)
    assert calls == [("kd", (0, 1))]
    assert resumed["runs"] == whole["runs"]  # bit for bit on the CPU
    assert json.loads((cells / "kd-seed0.json").read_text())["resumed_from_epoch"] == 1

    # seeds whose partial states stand at different epochs resume apart, each from its own
    crash = True
    with pytest.raises(KeyboardInterrupt):
        _audit(teachers, tmp_path / "split", ensemble=True)
    (tmp_path / "split" / "cells" / "kd-seed1.partial.pt").unlink()
    crash = False
    calls.clear()
    split = _audit(teachers, tmp_path / "split", ensemble=True)
    assert calls == [("kd", (0,)), ("kd", (1,))]
    c, d = by_run(split), by_run(whole)
    assert max(abs(c[k] - d[k]) for k in c) <= 1.0, (c, d)


def test_an_audit_on_a_gpu_trains_an_attacks_seeds_in_one_run(teachers, tmp_path, monkeypatch):
    """On a GPU (simulated: accel on, the CPU's bf16) an attack's seeds train in one run_cells (their
    batches share each teacher forward), not as an ensemble unless asked; an attack that owns its
    step trains one cell at a time. On the CPU each cell trains alone."""
    import attacks.audit as audit_mod

    calls, real = [], audit_mod.run_cells

    def record(attack, *a, seeds, ensemble, **k):
        calls.append((attack.name, tuple(seeds), ensemble))
        return real(attack, *a, seeds=seeds, ensemble=ensemble, **k)

    monkeypatch.setattr(audit_mod, "run_cells", record)
    monkeypatch.setattr("nasty.accel.enabled", lambda device: True)
    _audit(teachers, tmp_path / "gpu", attacks=["kd", "skeptical"], students=["tiny-cnn"], epochs=1,
           attack_options={"skeptical": {"delay": 0}})
    assert calls == [("scratch", (0, 1), False), ("label-smoothing", (0, 1), False), ("kd", (0, 1), False),
                     ("skeptical", (0,), False), ("skeptical", (1,), False)]
    monkeypatch.undo()
    monkeypatch.setattr(audit_mod, "run_cells", record)
    calls.clear()
    _audit(teachers, tmp_path / "cpu", attacks=["kd"], students=["tiny-cnn"], epochs=1)
    assert calls == [(n, (s,), False) for n in ("scratch", "label-smoothing", "kd") for s in (0, 1)]


@pytest.mark.parametrize("name", ["kd", "hard-label", "dafl", "kd-topk", "scratch", "label-smoothing"])
def test_a_sample_mean_loss_of_joined_batches_is_the_sum_of_the_members_losses(name):
    """What lets an ensemble score all its members in one call (Attack.sample_mean): M x the loss
    of the M batches joined equals the sum of the M losses, here with a teacher and labels per member."""
    from attacks.audit import BASELINES

    attack = BASELINES[name]() if name in BASELINES else create_attack(name)
    assert attack.sample_mean
    torch.manual_seed(0)
    z, t = torch.randn(3, 16, 10, requires_grad=True), torch.randn(3, 16, 10)
    y = torch.randint(0, 10, (3, 16))
    t_or_none = None if name in BASELINES else t
    parts = sum(attack.loss(z[m], None if t_or_none is None else t[m], y[m])[0] for m in range(3))
    joined = 3 * attack.loss(z.flatten(0, 1), None if t_or_none is None else t.flatten(0, 1), y.flatten())[0]
    assert torch.allclose(parts, joined, rtol=1e-5, atol=1e-6), (parts, joined)
