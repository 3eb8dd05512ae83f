"""Diagnostics: the peak counter, and every plot written, non-blank, at the expected size."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread

from attacks import DAFL, DeepInversion
from nasty.checkpoint import load_model
from nasty.app.cli import main
from nasty.diagnostics import (count_peaks, peak_summary, plot_images, plot_logits, plot_omega_curve, plot_tsne,
                               save_figure, softened)


def test_count_peaks_one_hot_and_k_equal_peaks():
    one_hot = np.array([[0.97, 0.01, 0.01, 0.01]])
    assert count_peaks(one_hot).tolist() == [1]
    for k in range(1, 6):
        p = np.zeros((1, 10))
        p[0, :k] = 1.0 / k
        assert count_peaks(p).tolist() == [k]
    assert count_peaks(np.full((2, 5), 0.2)).tolist() == [5, 5]
    assert count_peaks([[0.5, 0.3, 0.2]], rel=0.5).tolist() == [2]  # 0.3 >= 0.25, 0.2 < 0.25


def test_softened_is_a_distribution_at_temperature():
    z = np.array([[2.0, 0.0, -1.0]])
    p = softened(z, 4.0)
    e = np.exp(z / 4.0)
    assert np.allclose(p, e / e.sum()) and np.isclose(p.sum(), 1.0)


@pytest.fixture(scope="module")
def pair(teachers):
    return {k: load_model(teachers["root"] / k)[0] for k in ("normal", "nasty")}


def assert_picture(path, size):
    img = imread(path)
    assert img.shape[1] == size[0] and img.shape[0] == size[1], img.shape
    rgb = img[..., :3]
    assert rgb.std() > 0.05 and (rgb < 0.9).mean() > 0.01  # drawn on, not a blank page


def test_logit_plot_and_its_numbers(pair, digits, tmp_path):
    fig, numbers = plot_logits(pair, digits, tau=4.0, samples=3)
    out = save_figure(fig, tmp_path / "logits.png", numbers=numbers, dpi=50)
    w, h = fig.get_size_inches()
    assert_picture(out, (round(w * 50), round(h * 50)))
    saved = json.loads((tmp_path / "logits.json").read_text())
    assert set(saved["teachers"]) == {"normal", "nasty"}
    for name, t in saved["teachers"].items():
        assert sum(t["peaks_histogram"]) == len(digits.test_y)
        assert t == {k: peak_summary(pair[name], digits, tau=4.0)[k] for k in t}
    # the nasty teacher's softened outputs are flatter: a lower top probability
    assert saved["teachers"]["nasty"]["mean_sorted"][0] < saved["teachers"]["normal"]["mean_sorted"][0]


def test_tsne_and_omega_plots(pair, digits, tmp_path):
    fig = plot_tsne(pair, digits, limit=120)
    assert_picture(save_figure(fig, tmp_path / "tsne.png", dpi=40), tuple(round(v * 40) for v in fig.get_size_inches()))
    sweep = json.loads((Path(__file__).parents[1] / "bench/results/omega_sweep_digits.json").read_text())
    fig = plot_omega_curve(sweep)
    assert_picture(save_figure(fig, tmp_path / "omega.png", dpi=40), tuple(round(v * 40) for v in fig.get_size_inches()))


def test_image_grids(pair, digits, tmp_path):
    grids = {}
    for name, model in pair.items():
        grids[f"dafl {name}"] = DAFL().sample(model, digits, count=20, steps=3)
        grids[f"di {name}"] = DeepInversion(iterations=3).sample(model, digits, count=20)
    for images, labels in grids.values():
        assert images.shape == (20, 1, 8, 8) and labels.shape == (20,) and labels.dtype == torch.int64
    fig = plot_images(grids, digits)
    assert_picture(save_figure(fig, tmp_path / "img.png", dpi=40), tuple(round(v * 40) for v in fig.get_size_inches()))


def test_cli_plot(teachers, tmp_path):
    root = teachers["root"]
    res = CliRunner().invoke(main, ["plot", "logits", "--teacher", str(root / "nasty"), "--reference",
                                    str(root / "normal"), "--out", str(tmp_path / "l.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "l.png").stat().st_size > 10_000 and (tmp_path / "l.json").exists()
    res = CliRunner().invoke(main, ["plot", "images", "--teacher", str(root / "nasty"), "--out", str(tmp_path / "i.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "i.png").stat().st_size > 5_000
    for args, words in ((["omega", "--out", "x.png"], "needs --sweep"),
                        (["tsne", "--out", "x.png"], "needs --teacher"),
                        (["logits", "--teacher", str(tmp_path / "none"), "--out", "x.png"], "no such file")):
        res = CliRunner().invoke(main, ["plot", *args])
        assert res.exit_code == 1 and words in res.output and "Traceback" not in res.output, res.output


def test_two_teachers_of_one_kind_are_told_apart_by_their_role(teachers, tmp_path):
    from nasty.diagnostics import render

    normal = teachers["root"] / "normal"
    render("logits", teacher=normal, reference=normal, out=tmp_path / "l.png")
    numbers = json.loads((tmp_path / "l.json").read_text())
    assert set(numbers["teachers"]) == {"normal", "normal (teacher)"}


class Elsewhere(torch.nn.Module):
    """A teacher whose weights live on another device than the CPU, as a CUDA teacher's do. This
    machine has no GPU, so the other device is ``meta`` (tensors without values): like CUDA, the
    model refuses an input that is not on its weights' device (with CUDA's own message), and it
    answers with zeros, since meta inputs carry no pixels. What it proves is where the diagnostics
    put their batches, not what the model computes."""

    def __init__(self, num_classes=10, num_features=6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_features, device="meta"))
        self.num_classes, self.seen = num_classes, []

    def _check(self, x):
        self.seen.append(x.device)
        if x.device != self.weight.device:
            raise RuntimeError(f"Input type ({x.device}) and weight type ({self.weight.device}) should be the same")

    def forward_features(self, x):
        self._check(x)
        return torch.zeros(len(x), len(self.weight))

    def forward_head(self, f):
        return torch.zeros(len(f), self.num_classes)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_diagnostics_feed_a_model_on_another_device_batches_on_that_device(digits):
    """report.html crashed on CUDA: the logit and t-SNE diagnostics fed CPU batches to CUDA teachers.
    Fails with the CUDA-style error if any diagnostic feeds a batch from the CPU to this teacher."""
    model = Elsewhere()
    summary = peak_summary(model, digits, tau=4.0)
    assert sum(summary["peaks_histogram"]) == len(digits.test_y)
    fig, numbers = plot_logits({"elsewhere": model}, digits, tau=4.0, samples=2)
    assert numbers["teachers"]["elsewhere"]["mean_peaks"] == 10.0  # all-zero logits: ten equal peaks
    assert model.seen and set(model.seen) == {torch.device("meta")}


def test_the_diagnostics_do_not_import_the_attacks():
    """nasty/ is the lower layer: attacks/ builds on it, never the other way round."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    code = "import sys, nasty.diagnostics; print(sorted(m for m in sys.modules if m.split('.')[0] == 'attacks'))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert res.stdout.strip() == "[]", res.stdout
