"""attacks/_graphs.py's StepGraph on the CPU: the data path of a whole step replayed as one CUDA
graph (``run_cells(graphs="step")``), walked without capturing. The capture itself runs only on a
GPU (tests/test_cuda.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import attacks._graphs as graphs
from attacks import create_attack
from attacks._graphs import StepGraph
from attacks.base import run_cells
from nasty.checkpoint import load_model
from nasty.trainer import TrainConfig

CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=1)
ARCHS = ["tiny-cnn", "mlp"]


@pytest.fixture(scope="module")
def pair(teachers):
    return {src: load_model(teachers["root"] / src)[0] for src in ("normal", "nasty")}


def _batch(n=4, *, t=True):
    return {("s", "a"): (torch.randn(n, 3), torch.randn(n, 2) if t else None)}, {"s": torch.randint(0, 2, (n,))}


def test_a_step_graph_warms_up_then_runs_on_its_own_inputs_and_starts_over_each_epoch():
    seen = []
    sg = StepGraph(lambda batches, labels: seen.append((batches, labels)) or len(seen), device="cpu", warmup=2)
    steps = [_batch() for _ in range(5)]
    for i, (b, y) in enumerate(steps):
        sg(b, y, epoch=0, step=i)
    assert [s[0] is steps[i][0] for i, s in enumerate(seen)] == [True, True, False, False, False]
    static = seen[2][0][("s", "a")][0]
    assert all(s[0][("s", "a")][0] is static for s in seen[2:])  # one set of input tensors, refilled
    assert torch.equal(static, steps[4][0][("s", "a")][0])  # holding the latest batch's values
    assert torch.equal(seen[2][1]["s"], steps[4][1]["s"])
    seen.clear()
    for i, (b, y) in enumerate(steps[:3]):  # a new epoch: warm-up again, new inputs
        sg(b, y, epoch=1, step=i)
    assert seen[0][0] is steps[0][0] and seen[2][0][("s", "a")][0] is not static
    odd = _batch(3)  # another batch size runs eagerly, on the batch as it is
    sg(*odd, epoch=1, step=3)
    assert seen[-1][0] is odd[0]
    missing = _batch(t=False)  # so does a batch without the teacher's logits
    sg(*missing, epoch=1, step=4)
    assert seen[-1][0] is missing[0]


def test_a_step_graph_keeps_a_batch_that_several_sources_see_as_one_tensor():
    seen = []
    sg = StepGraph(lambda batches, labels: seen.append(batches), device="cpu", warmup=0)

    def shared():
        x = torch.randn(4, 3)
        return {("s", "a"): (x, torch.randn(4, 2)), ("s", "b"): (x, torch.randn(4, 2))}, {"s": None}

    first, second = shared(), shared()
    sg(*first, epoch=0, step=0)
    sg(*second, epoch=0, step=1)
    a, b = seen[-1][("s", "a")][0], seen[-1][("s", "b")][0]
    assert a is b and a is not second[0][("s", "a")][0] and torch.equal(a, second[0][("s", "a")][0])
    apart = shared()
    apart[0][("s", "b")] = (torch.randn(4, 3), apart[0][("s", "b")][1])  # now two batches: eagerly, as they are
    sg(*apart, epoch=0, step=2)
    assert seen[-1] is apart[0]


def test_a_step_that_cannot_be_captured_runs_eagerly_with_one_warning(monkeypatch):
    class Refused:
        def __init__(self):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Refused)
    seen = []
    sg = StepGraph(lambda batches, labels: seen.append(batches) or len(seen), device="cpu", warmup=0)
    sg.capture = True  # as on a GPU
    steps = [_batch() for _ in range(3)]
    with pytest.warns(RuntimeWarning, match=r"could not capture the training step as a CUDA graph \(RuntimeError: "
                                            r"operation not permitted when stream is capturing\); it runs eagerly"):
        assert sg(*steps[0], epoch=0, step=0) == 1
    assert [sg(*b, epoch=0, step=i) for i, b in enumerate(steps[1:], 1)] == [2, 3]
    assert [s is b for s, (b, _) in zip(seen, steps)] == [True] * 3  # every step on its own batch, eagerly


def test_whole_step_mode_trains_bit_identically_and_resumes(pair, digits, monkeypatch):
    """On the CPU ``graphs="step"`` walks the graph's data path (warm-up, own inputs, a new
    start each epoch) and must train exactly what the plain loop trains, ensemble or not."""
    copies = []
    real = graphs._copy_into
    monkeypatch.setattr(graphs, "_copy_into", lambda *a: copies.append(1) or real(*a))
    kd = lambda: create_attack("kd")  # noqa: E731
    steps = len(digits.train_y) // CFG.batch_size
    for ensemble in (False, True):
        saved, stepped = [], []
        plain = run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=ensemble,
                          save=lambda s: saved.append(copy.deepcopy(s)))
        copies.clear()
        whole = run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=ensemble,
                          graphs="step", save=lambda s: stepped.append(copy.deepcopy(s)))
        assert len(copies) == CFG.epochs * (steps - 4)  # per epoch: 3 warm-up steps, 1 on fresh inputs
        assert whole == plain
        for seed in (0, 1):
            for k, t in saved[0][seed]["students"].items():
                assert torch.equal(t, stepped[0][seed]["students"][k]), (ensemble, seed, k)
        again = run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0, 1], device="cpu", ensemble=ensemble,
                          graphs="step", resume=stepped[0])
        assert again == plain
    with pytest.raises(ValueError, match="graphs must be None, True, False or 'step'"):
        run_cells(kd(), pair, ARCHS, digits, config=CFG, seeds=[0], device="cpu", graphs="all")
