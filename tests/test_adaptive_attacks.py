"""The adaptive attacks (skeptical, kd-sweep, hard-label-sweep, kd-topk) and the label-smoothing
baseline: their losses against hand-computed values, where the skeptical student's KD gradient
goes, that kd-sweep chooses without reading the test set, and that hard-label-sweep reads only
the top-1 answers."""

import math
from dataclasses import replace

import pytest
import torch

import attacks.base as base
from attacks import KDSweep, KDTopK, LabelSmoothing, Skeptical, attack_names, create_attack
from attacks.skeptical import skeptical_losses
from nasty.checkpoint import load_model
from nasty.errors import NastyError
from nasty.models import create_model
from nasty.trainer import TrainConfig


def softmax(row, tau=1.0):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_kd_topk_loss_matches_hand_computation():
    zs, zt, y, tau, alpha = [1.0, 0.0, -1.0, 0.5], [3.0, 1.0, 0.0, -2.0], 2, 2.0, 0.9
    ps = softmax(zs, tau)
    ce = -math.log(softmax(zs)[y])
    top2 = softmax([3.0, 1.0], tau) + [0.0, 0.0]  # the two largest, renormalised
    for k, q in ((2, top2), (1, [1.0, 0.0, 0.0, 0.0]), (4, softmax(zt, tau))):
        loss, terms = KDTopK(k=k, alpha=alpha, tau=tau).loss(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([y]))
        assert terms["kl"].item() == pytest.approx(kl(q, ps), rel=1e-5), k
        assert loss.item() == pytest.approx(alpha * tau**2 * kl(q, ps) + (1 - alpha) * ce, rel=1e-5), k


def test_label_smoothing_loss_matches_hand_computation():
    z, y, eps = [2.0, 0.0, -1.0], 0, 0.1
    target = [1 - eps + eps / 3, eps / 3, eps / 3]
    expect = -sum(t * math.log(p) for t, p in zip(target, softmax(z)))
    assert LabelSmoothing(smoothing=eps).loss(torch.tensor([z]), None, torch.tensor([y]))[0].item() == pytest.approx(
        expect, rel=1e-6)


def test_skeptical_losses_match_hand_computation():
    final, middle, shallow, teacher = [2.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 2.0]
    y, tau, alpha = 0, 4.0, 0.9
    args = [torch.tensor([v]) for v in (final, middle, shallow, teacher)] + [torch.tensor([y])]
    got = skeptical_losses(*args, alpha=alpha, tau=tau, middle_kl=0.3, distil=True)
    ce = lambda z: -math.log(softmax(z)[y])  # noqa: E731
    assert got["ce"].item() == pytest.approx(ce(final), rel=1e-6)
    kd = alpha * tau**2 * kl(softmax(teacher, tau), softmax(shallow, tau)) + (1 - alpha) * ce(shallow)
    assert got["kd"].item() == pytest.approx(kd, rel=1e-5)
    self_term = 0.3 * kl(softmax(final, tau), softmax(middle, tau)) + 0.7 * ce(middle)
    assert got["self"].item() == pytest.approx(self_term, rel=1e-5)
    before = skeptical_losses(*args, alpha=alpha, tau=tau, middle_kl=0.3, distil=False)  # before the delay
    assert set(before) == {"ce"} and before["ce"].item() == pytest.approx(ce(final), rel=1e-6)


@pytest.mark.parametrize("arch", ["tiny-cnn", "mlp", "small-cnn"])
def test_the_skeptical_kd_gradient_reaches_only_the_shallow_head_and_the_layers_below_it(arch, digits):
    torch.manual_seed(0)
    student = Skeptical().student(create_model(arch, num_classes=10, in_chans=1), digits)
    x, y = next(digits.batches("train", batch_size=16, seed=0))
    t = torch.randn(16, 10)
    final, middle, shallow = student.forward_heads(x)
    losses = skeptical_losses(final, middle, shallow, t, y, alpha=0.9, tau=4.0, middle_kl=0.3, distil=True)
    losses["kd"].backward()
    net = student.net
    shallow_path = net.taps[student.points[0]]  # e.g. features.1: that module and every one before it
    depth = int(shallow_path.split(".")[1])
    reached = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for name, p in student.named_parameters():
        below = name.startswith("shallow_head.") or (name.startswith("net.features.") and
                                                     int(name.split(".")[2]) <= depth)
        assert (name in reached) == below, f"{name}: {'no' if below else 'a'} KD gradient"
    assert net.head.weight.grad is None and all(p.grad is None for p in student.middle_head.parameters())


@pytest.mark.parametrize("arch,shape", [("tiny-cnn", (1, 8, 8)), ("mlp", (1, 8, 8)), ("small-cnn", (1, 8, 8)),
                                        ("cnn", (3, 32, 32)), ("resnetc20", (3, 32, 32))])
def test_zoo_taps_leave_the_plain_forward_as_it_is(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=shape[0]).eval()
    x = torch.randn(2, *shape)
    logits, seen = model.forward_taps(x, list(model.taps))
    assert len(model.taps) >= 2 and list(seen) == list(model.taps)
    assert torch.equal(logits, model(x))
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone


def test_the_skeptical_student_is_evaluated_on_its_final_head(digits):
    torch.manual_seed(1)
    plain = create_model("tiny-cnn", num_classes=10, in_chans=1)
    torch.manual_seed(1)
    student = Skeptical().student(create_model("tiny-cnn", num_classes=10, in_chans=1), digits).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(student(x), plain.eval()(x))  # same weights as the plain model, same forward
    assert torch.equal(student.forward_heads(x)[0], student(x))


def test_bad_skeptical_settings_are_clear_errors(digits):
    mlp = create_model("mlp", num_classes=10, in_chans=1)
    with pytest.raises(NastyError, match="skeptical.shallow must index"):
        Skeptical(shallow=5).student(mlp, digits)
    with pytest.raises(NastyError, match="must be shallower"):
        Skeptical(shallow=1, middle=0).student(mlp, digits)
    with pytest.raises(NastyError, match="skeptical.delay \\(20\\) must be below the student epochs"):
        Skeptical(delay=20).setup(None, digits, seed=0, batch_size=8, epochs=20, device="cpu")
    with pytest.raises(NastyError, match="skeptical.delay must be"):
        Skeptical(delay=-1)
    with pytest.raises(NastyError, match="skeptical.delay \\(3\\) must be below the student epochs \\(3\\)"):
        Skeptical(delay=3).check_epochs(3)
    tv = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(NastyError, match="at least two named taps"):
        Skeptical().student(tv, digits)


def test_bad_topk_and_sweep_settings_are_clear_errors(digits):
    with pytest.raises(NastyError, match="kd-topk.k must be a whole number >= 1"):
        KDTopK(k=0)
    with pytest.raises(NastyError, match="at most the number of classes \\(10\\)"):
        KDTopK(k=11).check_data(digits)
    with pytest.raises(NastyError, match="val_fraction must be in"):
        KDSweep(val_fraction=1.5)
    with pytest.raises(NastyError, match="search_epochs"):
        KDSweep(search_epochs=0)
    with pytest.raises(NastyError, match="search_steps must be a whole number >= 0"):
        KDSweep(search_steps=-1)
    with pytest.raises(NastyError, match="unknown attack 'nope'"):
        attack_names(["kd", "nope"])
    assert attack_names(["kd", "all"]) == ["kd", "hard-label", "dafl", "deepinversion", "skeptical", "kd-sweep",
                                           "hard-label-sweep", "kd-topk", "recalibrate"]
    with pytest.raises(NastyError, match="hard-label-sweep.search_steps must be"):  # each names itself
        create_attack("hard-label-sweep", search_steps=-1)
    with pytest.raises(NastyError, match=r"kd-sweep.taus must be a list of 1 to 32 finite numbers > 0, got 0"):
        create_attack("kd-sweep", taus=0)  # what --attack-option kd-sweep.taus=0 passes (4 would be [4.0])


def test_kd_sweep_chooses_without_reading_the_test_set(teachers, digits, monkeypatch):
    normal, _ = load_model(teachers["root"] / "normal")
    normal.eval().requires_grad_(False)
    sweep = KDSweep(taus=(1.0, 4.0), alphas=(0.5, 0.9), search_epochs=1, search_steps=0)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=0)
    seen = []
    real_evaluate = base.evaluate
    monkeypatch.setattr(base, "evaluate", lambda model, data, **k: seen.append(data) or real_evaluate(model, data, **k))
    picks = sweep.select(normal, digits, archs=["mlp"], config=cfg, device="cpu")
    assert len(seen) == 4 and all(d.test_x is not digits.test_x and len(d.test_y) < len(digits.train_y) for d in seen)
    # a test set of noise with shuffled labels changes nothing in the choice
    g = torch.Generator().manual_seed(0)
    poisoned = replace(digits, test_x=torch.randint(0, 256, digits.test_x.shape, dtype=torch.uint8, generator=g),
                       test_y=digits.test_y[torch.randperm(len(digits.test_y), generator=g)], _device_cache={})
    assert sweep.select(normal, poisoned, archs=["mlp"], config=cfg, device="cpu") == picks
    rows = picks["mlp"]["tried"]
    assert [(r["tau"], r["alpha"]) for r in rows] == [(1.0, 0.5), (1.0, 0.9), (4.0, 0.5), (4.0, 0.9)]
    best = max(r["val_accuracy"] for r in rows)
    assert picks["mlp"]["val_accuracy"] == best and next(r for r in rows if r["val_accuracy"] == best) == {
        k: picks["mlp"][k] for k in ("tau", "alpha", "val_accuracy")}


def test_kd_sweep_with_few_images_scores_on_several_splits_and_keeps_the_best_mean(teachers, digits, monkeypatch):
    """A thief with 10% of digits has 27 validation images per split: the search repeats on random
    splits until they hold ``val_images`` in all (at most 5) and picks by the mean. Its first split
    is the one a single-split search uses (``val_images=0``, what cells from before ran)."""
    assert [KDSweep().splits(n) for n in (27, 86, 200, 287)] == [5, 3, 1, 1]
    assert KDSweep(val_images=0).splits(27) == 1 and KDSweep(val_images=60).splits(27) == 3
    normal, _ = load_model(teachers["root"] / "normal")
    few = digits.subset(0.1, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=0)
    grid = {"taus": (1.0, 8.0), "alphas": (0.9,), "search_epochs": 1, "search_steps": 0}
    one = KDSweep(val_images=0, **grid).select(normal, few, archs=["mlp"], config=cfg, device="cpu")["mlp"]
    runs, real = [], base.run_cells
    monkeypatch.setattr(base, "run_cells", lambda *a, **k: runs.append((a[3], real(*a, **k))) or runs[-1][1])
    three = KDSweep(val_images=60, **grid).select(normal, few, archs=["mlp"], config=cfg, device="cpu")["mlp"]
    assert one["splits"] == 1 and three["splits"] == 3 and len(runs) == 3
    held = [set(map(tuple, split.test_x.flatten(1).tolist())) for split, _ in runs]  # each split's validation images
    assert len(held[0]) > 20 and held[0] != held[1] and held[1] != held[2]
    per_split = [[acc[0][(f"candidate{i}", "mlp")] for i in range(2)] for _, acc in runs]
    assert [r["val_accuracy"] for r in one["tried"]] == [round(a, 4) for a in per_split[0]]  # split 0: the old one
    assert [r["val_accuracy"] for r in three["tried"]] == [round(sum(s[i] for s in per_split) / 3, 4) for i in range(2)]
    assert three["val_accuracy"] == max(r["val_accuracy"] for r in three["tried"])


def test_kd_sweep_trains_its_candidates_in_one_run_as_each_would_train_alone(teachers, digits):
    from attacks.kd import KD

    normal, _ = load_model(teachers["root"] / "normal")
    normal.eval().requires_grad_(False)
    sweep = KDSweep(taus=(1.0, 4.0), alphas=(0.5, 0.9), search_epochs=1, search_steps=0)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=3)
    forwards = []
    hook = normal.register_forward_hook(lambda *a: forwards.append(1))
    try:
        picks = sweep.select(normal, digits, archs=["mlp", "tiny-cnn"], config=cfg, device="cpu")
    finally:
        hook.remove()
    split = digits.split_validation(0.2, seed=3)[1]
    assert len(forwards) == len(split.train_y) // 64  # one teacher forward per step for the four candidates
    for arch in ("mlp", "tiny-cnn"):
        for row in picks[arch]["tried"]:
            alone = base.run_students(KD(tau=row["tau"], alpha=row["alpha"]), {"thief": normal}, [arch], split,
                                      config=replace(cfg, epochs=1), device="cpu")
            assert round(alone[("thief", arch)], 4) == row["val_accuracy"], (arch, row)  # bit for bit on the CPU


def test_a_thief_with_few_images_searches_long_enough_to_see_a_difference(teachers, digits):
    """5 epochs of 10% of digits are 5 steps: every candidate ends at chance and the pick is the
    first pair by default. The search trains at least ``search_steps`` steps, within the schedule."""
    cfg = TrainConfig(epochs=20, batch_size=64, lr=0.05, seed=0)
    sweep = KDSweep()
    assert sweep.search_schedule(1077, cfg) == 5  # all of digits' 80%: 16 steps an epoch, 80 in 5 epochs
    assert sweep.search_schedule(323, cfg) == 16  # 30%: 5 steps an epoch
    assert sweep.search_schedule(107, cfg) == 20  # 10%: 1 step an epoch, so the whole schedule
    assert KDSweep(search_steps=0).search_schedule(107, cfg) == 5 == KDSweep(search_steps=200).search_schedule(
        50_000, replace(cfg, batch_size=128))
    assert KDSweep(search_epochs=30).search_schedule(107, cfg) == 30  # asked for: not cut to the schedule
    # the thief's whole 10% share (143 images) makes 2 steps an epoch, 40 in the final run: the search trains 40
    assert sweep.search_schedule(107, cfg, 143) == 40 and KDSweep(match_steps=False).search_schedule(107, cfg, 143) == 20
    assert sweep.search_schedule(1077, cfg, 1437) == 5 and sweep.search_schedule(323, cfg, 431) == 16  # as before
    normal, _ = load_model(teachers["root"] / "normal")
    forwards = []
    hook = normal.eval().requires_grad_(False).register_forward_hook(lambda *a: forwards.append(1))
    try:
        KDSweep(taus=(1.0,), alphas=(0.9,), search_epochs=1, val_images=0).select(
            normal, digits.subset(0.1), archs=["mlp"], config=replace(cfg, epochs=4), device="cpu")
    finally:
        hook.remove()
    # 1 step an epoch on the split, 8 epochs: the 8 steps that the final run's 4 epochs of 2 take, not search_epochs' 1
    assert len(forwards) == 8


def test_kd_sweep_candidates_take_the_gpu_default_of_a_captured_step(teachers, digits, monkeypatch):
    """On a GPU the search's candidates train as every audit run does there: the whole step of all
    of them replayed as one CUDA graph (simulated on the CPU, where StepGraph walks the same data
    path without capturing: the picks equal the eager loop's)."""
    normal, _ = load_model(teachers["root"] / "normal")
    sweep = KDSweep(taus=(1.0, 4.0), alphas=(0.9,), search_epochs=1, search_steps=0)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=0)
    loop = sweep.select(normal, digits, archs=["mlp"], config=cfg, device="cpu")["mlp"]["tried"]
    made, real = [], base.StepGraph
    monkeypatch.setattr(base, "graphs_for", lambda attack, device: "step")
    monkeypatch.setattr(base, "StepGraph", lambda run, **k: made.append(k) or real(run, **k))
    again = sweep.select(normal, digits, archs=["mlp"], config=cfg, device="cpu")["mlp"]["tried"]
    assert len(made) == 1  # every candidate in one run, one step graph
    assert again == loop


def test_kd_sweep_trains_with_its_pick_and_reports_it(teachers, digits):
    normal, _ = load_model(teachers["root"] / "normal")
    notes = {}
    attack = create_attack("kd-sweep", taus=(2.0,), alphas=(0.7,), search_epochs=1, search_steps=0, tau=99.0)  # tau: not its setting
    acc = base.run_students(attack, {"normal": normal}, ["mlp"], digits, notes=notes,
                            config=TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=0), device="cpu")
    assert acc[("normal", "mlp")] > 30.0
    pick = notes["normal"]["picks"]["mlp"]
    assert (pick["tau"], pick["alpha"]) == (2.0, 0.7)


def test_an_audit_refuses_a_skeptical_delay_past_its_epochs_before_training(teachers, tmp_path):
    """It failed in the skeptical cell's setup, after the baselines and earlier attacks had trained."""
    from attacks.audit import audit

    with pytest.raises(NastyError, match="skeptical.delay \\(2\\) must be below the student epochs \\(2\\)"):
        audit(teacher=teachers["root"] / "nasty", reference=teachers["root"] / "normal", out=tmp_path,
              attacks=["kd", "skeptical"], seeds=(0,), epochs=2, attack_options={"skeptical": {"delay": 2}},
              device="cpu", quiet=True, plots=False)
    assert not list(tmp_path.rglob("*.json"))


def test_a_default_audit_meets_the_thief_who_picks_its_own_temperature():
    """It decides the worst case on digits (docs/results-digits.md); an audit without it would report a rosier verdict."""
    from click.testing import CliRunner

    from attacks import DEFAULT_ATTACKS
    from nasty.app.cli import main

    assert "kd-sweep" in DEFAULT_ATTACKS
    out = "".join(CliRunner().invoke(main, ["audit", "--help"], terminal_width=200).output.split())  # unwrapped
    assert f"[default:{','.join(DEFAULT_ATTACKS)}]" in out


def test_hard_label_sweep_learns_from_the_top1_answers_alone(teachers, digits):
    """Its students are the same from a teacher and from that teacher served top-1 (immunity 0 by
    construction), where kd-sweep's differ; a top-1 answer is one-hot at every temperature it tries."""
    from attacks.kd_sweep import top1_answers
    from nasty.defences import Defended, create_transform

    normal, _ = load_model(teachers["root"] / "normal")
    normal.eval().requires_grad_(False)
    top1 = Defended(normal, transform=create_transform({"name": "topk", "k": 1})).eval()
    z = normal(next(digits.batches("test", batch_size=64))[0])
    for tau in (1.0, 16.0):
        p = torch.softmax(top1_answers(z) / tau, dim=-1)
        assert torch.equal(p.argmax(-1), z.argmax(-1)) and p.topk(2, dim=-1).values[:, 1].max() < 1e-20
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=0)
    settings = {"taus": (1.0, 16.0), "alphas": (0.9,), "search_epochs": 1, "search_steps": 0}
    teachers_ = {"normal": normal, "nasty": top1}
    labels = base.run_cells(create_attack("hard-label-sweep", **settings), teachers_, ["mlp"], digits, config=cfg,
                            seeds=[0], device="cpu")[0]
    assert labels[("normal", "mlp")] == labels[("nasty", "mlp")]
    soft = base.run_cells(create_attack("kd-sweep", **settings), teachers_, ["mlp"], digits, config=cfg,
                          seeds=[0], device="cpu")[0]
    assert soft[("nasty", "mlp")] == labels[("nasty", "mlp")]  # top-1 outputs are top-1 answers
    # the soft outputs are not: at the same pick the two losses differ (kd-sweep's on the top-1 outputs does not)
    ctx, y, s = {"picks": {"mlp": {"tau": 4.0, "alpha": 0.9}}}, z.argmax(-1), torch.randn_like(z)
    loss = lambda name, t: create_attack(name).losses(ctx, s, t, y, epoch=0, arch="mlp")["loss"]  # noqa: E731
    assert loss("hard-label-sweep", z) == loss("kd-sweep", top1(next(digits.batches("test", batch_size=64))[0]))
    assert not torch.allclose(loss("hard-label-sweep", z), loss("kd-sweep", z))
