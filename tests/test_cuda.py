"""The cuda tier: every path that runs on the CPU, run on a GPU (bf16 autocast, channels_last).

Skipped where ``torch.cuda.is_available()`` is false (tests/conftest.py); ``bench/gpu_check.sh``
runs it with ``pytest -m cuda``. Sized to take about a minute on one H100.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from nasty import checkpoint as ckpt
from nasty.app.cli import main
from nasty.app.demo import QUICK

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def gpu_teachers(tmp_path_factory):
    """A normal and a nasty digits teacher trained on the GPU (4 epochs each)."""
    from nasty.runs import harden, train

    root = tmp_path_factory.mktemp("gpu-teachers")
    normal = train(dataset="digits", out=root / "normal", epochs=4, device="cuda", quiet=True)
    nasty = harden(teacher=root / "normal", out=root / "nasty", epochs=4, device="cuda", quiet=True)
    return {"root": root, "normal": normal, "nasty": nasty}


def test_demo_quick_with_plots_finishes_on_cuda(tmp_path):
    """The crash of issue 16: report.html fed CPU batches to CUDA teachers."""
    res = CliRunner().invoke(main, ["demo", "--quick", "--quiet", "--out", str(tmp_path), "--device", "cuda"])
    assert res.exit_code == 0, res.output
    audit = tmp_path / "audit"
    report = json.loads((audit / "report.json").read_text())
    assert {s["attack"] for s in report["summary"]} == set(QUICK["attacks"])
    html = (audit / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "id='images'" in html
    for name in ("logits.png", "tsne.png", "images.png"):
        assert (audit / name).stat().st_size > 10_000


def test_train_and_harden_on_cuda_learn_and_resume(gpu_teachers, tmp_path, monkeypatch):
    from nasty.runs import train

    assert gpu_teachers["normal"]["accuracy"] > 90, gpu_teachers["normal"]["accuracy"]
    assert gpu_teachers["nasty"]["accuracy"] > 80, gpu_teachers["nasty"]["accuracy"]
    model, card = ckpt.load_model(gpu_teachers["root"] / "nasty")  # written from CUDA, loads and verifies
    assert card["sha256"] == ckpt.sha256_file(gpu_teachers["root"] / "nasty" / ckpt.WEIGHTS)

    # a run stopped after its second epoch goes on with --resume and ends where it should
    real, calls = ckpt.save_state, []

    def stop_after_two(out, state):
        real(out, state)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_state", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(dataset="digits", out=tmp_path / "n", epochs=4, device="cuda", quiet=True)
    monkeypatch.setattr(ckpt, "save_state", real)
    resumed = train(dataset="digits", out=tmp_path / "n", epochs=4, device="cuda", quiet=True, resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "n" / ckpt.METRICS).read_text().splitlines()]
    assert resumed["epoch"] == 4 and len(metrics) == 4
    # the same seed on the GPU (cuDNN is not bit-deterministic): the same accuracy within a few points
    assert abs(resumed["accuracy"] - gpu_teachers["normal"]["accuracy"]) <= 3.0, resumed["accuracy"]


def test_audit_with_plots_on_cuda_resumes_inside_a_cell(gpu_teachers, tmp_path, monkeypatch):
    import attacks.audit as audit_mod

    root = gpu_teachers["root"]
    kw = {"teacher": root / "nasty", "reference": root / "normal", "attacks": ["kd", "dafl", "deepinversion"],
          "students": ["tiny-cnn", "mlp"], "seeds": (0,), "epochs": 3, "device": "cuda", "quiet": True,
          "checkpoint_seconds": 0, "attack_options": {"deepinversion": {"pool_size": 64, "iterations": 20}}}
    real = audit_mod.run_cells

    def crash_in_dafl(attack, *a, save=None, **k):
        def save_then_crash(states):
            save(states)
            if attack.name == "dafl" and states[0]["epoch"] == 2:
                raise KeyboardInterrupt
        return real(attack, *a, save=save_then_crash, **k)

    monkeypatch.setattr(audit_mod, "run_cells", crash_in_dafl)
    with pytest.raises(KeyboardInterrupt):
        audit_mod.audit(out=tmp_path, **kw)
    assert (tmp_path / "cells" / "dafl-seed0.partial.pt").exists()
    monkeypatch.setattr(audit_mod, "run_cells", real)
    report = audit_mod.audit(out=tmp_path, **kw)
    assert json.loads((tmp_path / "cells" / "dafl-seed0.json").read_text())["resumed_from_epoch"] == 2
    kd = {(r["student"], r["source"]): r["accuracy"] for r in report["runs"] if r["attack"] == "kd"}
    assert kd[("tiny-cnn", "normal")] > 50, kd  # the students learn on the GPU
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3


def test_bf16_on_cuda_is_within_tolerance_of_fp32(gpu_teachers, digits):
    """The teacher's logits and the KD students' accuracies: bf16 autocast + channels_last on the
    GPU against fp32 on the CPU, from the same weights and the same seeds."""
    from attacks import create_attack
    from attacks.base import run_students
    from nasty import accel
    from nasty.trainer import TrainConfig, evaluate

    model, _ = ckpt.load_model(gpu_teachers["root"] / "normal")
    x = next(digits.batches("test", batch_size=256, device="cpu"))[0]
    with torch.no_grad():
        want = model.eval()(x)
        fast = accel.prepare(model, "cuda")
        with accel.autocast("cuda"):
            got = fast(accel.layout(x.cuda(), "cuda")).float().cpu()
    assert (got - want).abs().max() <= 0.05 * want.abs().max() + 0.05, (got - want).abs().max()
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.98
    cpu = evaluate(model.cpu(), digits, device="cpu")["accuracy"]
    gpu = evaluate(accel.prepare(model, "cuda"), digits, device="cuda")["accuracy"]
    assert abs(cpu - gpu) <= 1.0, (cpu, gpu)

    pair = {k: ckpt.load_model(gpu_teachers["root"] / k)[0] for k in ("normal", "nasty")}
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    on = {dev: run_students(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits, config=cfg, device=dev)
          for dev in ("cuda", "cpu")}
    assert all(abs(on["cuda"][k] - on["cpu"][k]) <= 3.0 for k in on["cpu"]), on  # 3 points: 13 of 450 images


def test_a_student_captured_as_cuda_graphs_trains_as_its_eager_self(monkeypatch):
    """attacks/_graphs.py: the replayed forward and backward give the eager outputs, gradients and
    BatchNorm statistics (fp32 without TF32 here, so they agree closely; the two may still pick
    different cuDNN kernels: on an H100 with TF32 on, outputs differed by 2e-4 after one step);
    capture leaves the statistics as they were; evaluation and a batch of another shape run the
    eager forward."""
    import copy

    from attacks._graphs import capture
    from nasty.models import create_model

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    close = dict(atol=1e-3, rtol=1e-3)
    torch.manual_seed(0)
    eager = create_model("resnetc20", num_classes=10, in_chans=3).cuda().train()
    graphed = copy.deepcopy(eager)
    x = torch.randn(32, 3, 32, 32, device="cuda")
    assert capture(graphed, x, name="resnetc20")
    for a, b in zip(eager.buffers(), graphed.buffers()):
        assert torch.equal(a, b)  # capture's warm-up left no trace
    for step in range(3):
        xs = torch.randn(32, 3, 32, 32, device="cuda")
        za, zb = eager(xs), graphed(xs)
        assert torch.allclose(za, zb, **close), (step, (za - zb).abs().max())
        za.square().mean().backward()
        zb.square().mean().backward()
        for (name, pa), pb in zip(eager.named_parameters(), graphed.parameters()):
            assert torch.allclose(pa.grad, pb.grad, atol=1e-3, rtol=1e-2), (step, name)
            with torch.no_grad():
                pa -= 0.1 * pa.grad
                pb -= 0.1 * pb.grad
            pa.grad = pb.grad = None
    for a, b in zip(eager.buffers(), graphed.buffers()):
        assert torch.allclose(a.float(), b.float(), **close)
    small = torch.randn(8, 3, 32, 32, device="cuda")
    assert torch.allclose(eager(small), graphed(small), **close)  # another shape: eager
    with torch.no_grad():
        assert torch.allclose(eager.eval()(x), graphed.eval()(x), **close)


def test_students_train_as_a_captured_step_by_default_within_noise_of_eager_graphs_and_ensemble(gpu_teachers, digits,
                                                                                              monkeypatch):
    """What the audit does on a GPU by default: every seed's students in one run, their whole step
    replayed as one CUDA graph per epoch; within noise of the eager loop, of each student's forward
    and backward replayed alone (graphs=True) and of the batched ensemble (--ensemble on)."""
    import attacks._graphs as graphs
    import attacks.base as base
    from attacks import create_attack
    from attacks.base import graphs_for, run_cells, run_students
    from nasty.trainer import TrainConfig

    pair = {k: ckpt.load_model(gpu_teachers["root"] / k)[0] for k in ("normal", "nasty")}
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    assert graphs_for(create_attack("kd"), "cuda") == "step"
    captured, real = [], base.capture
    monkeypatch.setattr(base, "capture", lambda *a, **k: captured.append(real(*a, **k)) or captured[-1])
    replays, real_copy = [], graphs._copy_into
    monkeypatch.setattr(graphs, "_copy_into", lambda *a: replays.append(1) or real_copy(*a))
    default = run_cells(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits, config=cfg, seeds=[0, 1, 2],
                        device="cuda")
    assert replays and not captured  # the whole step replayed; no student captured alone
    together = run_cells(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits, config=cfg, seeds=[0, 1, 2],
                         device="cuda", graphs=True)
    assert captured == [True] * 12  # 3 seeds x 2 teachers x 2 students, each captured once
    ensemble = run_cells(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits, config=cfg, seeds=[0, 1, 2],
                         device="cuda", ensemble=True)
    for seed in (0, 1, 2):
        alone = run_students(create_attack("kd"), pair, ["tiny-cnn", "mlp"], digits, config=replace(cfg, seed=seed),
                             device="cuda", graphs=False)
        for name, way in (("default", default), ("graphs", together), ("ensemble", ensemble)):
            assert all(abs(alone[k] - way[seed][k]) <= 3.0 for k in alone), (name, seed, alone, way[seed])


def test_a_whole_step_replayed_as_one_cuda_graph_trains_within_noise_of_eager(gpu_teachers, digits, monkeypatch):
    """``run_cells(graphs="step")`` (the GPU default): every seed's students, their losses and the
    optimizers' steps captured as one graph per epoch, for students in a loop and as an ensemble:
    captured without a warning, replayed, and within noise of the eager loop; a run resumes."""
    import warnings

    import attacks._graphs as graphs
    from attacks import create_attack
    from attacks.base import run_cells, run_students
    from nasty.trainer import TrainConfig

    pair = {k: ckpt.load_model(gpu_teachers["root"] / k)[0] for k in ("normal", "nasty")}
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    copies, real = [], graphs._copy_into
    monkeypatch.setattr(graphs, "_copy_into", lambda *a: copies.append(1) or real(*a))
    archs = ["tiny-cnn", "mlp"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        states = []
        loop = run_cells(create_attack("kd"), pair, archs, digits, config=cfg, seeds=[0, 1, 2], device="cuda",
                         graphs="step", save=lambda state: states.append(copy.deepcopy(state)))  # live tensors
        ensemble = run_cells(create_attack("kd"), pair, archs, digits, config=cfg, seeds=[0, 1, 2], device="cuda",
                             graphs="step", ensemble=True)
        resumed = run_cells(create_attack("kd"), pair, archs, digits, config=cfg, seeds=[0, 1, 2], device="cuda",
                            graphs="step", resume=states[0])
    assert not [w for w in caught if "could not capture" in str(w.message)], [str(w.message) for w in caught]
    steps = len(digits.train_y) // cfg.batch_size
    assert len(copies) == (2 * cfg.epochs + cfg.epochs - 1) * (steps - 4)  # every step past the warm-up replayed
    for seed in (0, 1, 2):
        alone = run_students(create_attack("kd"), pair, archs, digits, config=replace(cfg, seed=seed),
                             device="cuda", graphs=False)
        for name, way in (("loop", loop), ("ensemble", ensemble), ("resumed", resumed)):
            assert all(abs(alone[k] - way[seed][k]) <= 3.0 for k in alone), (name, seed, alone, way[seed])


def test_an_audit_on_cuda_trains_an_attacks_seeds_in_one_run(gpu_teachers, tmp_path, monkeypatch):
    import attacks.audit as audit_mod

    calls, real = [], audit_mod.run_cells

    def record(attack, *a, seeds, ensemble, **k):
        calls.append((attack.name, tuple(seeds), ensemble))
        return real(attack, *a, seeds=seeds, ensemble=ensemble, **k)

    monkeypatch.setattr(audit_mod, "run_cells", record)
    root = gpu_teachers["root"]
    audit_mod.audit(teacher=root / "nasty", reference=root / "normal", out=tmp_path, attacks=["kd", "skeptical"],
                    students=["tiny-cnn"], seeds=(0, 1), epochs=2, device="cuda", quiet=True, plots=False,
                    attack_options={"skeptical": {"delay": 1}})
    assert calls == [("scratch", (0, 1), False), ("label-smoothing", (0, 1), False), ("kd", (0, 1), False),
                     ("skeptical", (0,), False), ("skeptical", (1,), False)]  # skeptical owns its step: one by one


def test_diagnostics_on_cuda_teachers(gpu_teachers, digits):
    from nasty.diagnostics import peak_summary, plot_logits

    models = {k: ckpt.load_model(gpu_teachers["root"] / k)[0].cuda() for k in ("normal", "nasty")}
    fig, numbers = plot_logits(models, digits, tau=4.0, samples=2)
    for name, model in models.items():
        assert sum(numbers["teachers"][name]["peaks_histogram"]) == len(digits.test_y)
        on_cpu = peak_summary(model.cpu(), digits, tau=4.0)
        assert abs(on_cpu["mean_peaks"] - numbers["teachers"][name]["mean_peaks"]) <= 0.1
