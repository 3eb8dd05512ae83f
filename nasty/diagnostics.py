"""What makes a teacher nasty, made visible.

    from nasty.diagnostics import plot_logits, plot_tsne
    fig = plot_logits({"normal": normal, "nasty": nasty}, data, tau=4)   # a matplotlib Figure
    fig.savefig("logits.png")

- :func:`plot_logits`: the softened outputs ``softmax(z / tau)`` of a few test images as bars,
  one column per teacher (a normal teacher shows one peak, a nasty one several), and over the
  whole test set the mean sorted probability profile and how many peaks each output has.
- :func:`plot_tsne`: t-SNE (scikit-learn) of penultimate features and of logits, per teacher.
- :func:`plot_images`: grids of images that data-free attacks synthesised from each teacher.
- :func:`plot_omega_curve`: the trade-off from ``bench/omega_sweep.py --json``.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no display needed);
Jupyter shows them inline.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from . import accel
from .data import TensorData
from .errors import NastyWarning, first_line, one_line
from .safety import plot_text

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .released import Brought

__all__ = ["softened", "count_peaks", "peak_summary", "plot_logits", "plot_tsne", "plot_images", "plot_omega_curve",
           "plot_frontier", "plot_search", "save_figure"]

COLORS = {"normal": "tab:blue", "nasty": "tab:red"}


@torch.no_grad()
def _outputs(model: nn.Module, data: TensorData, limit: int | None = None):
    """Penultimate features and logits of the test set (first ``limit`` images), as numpy arrays.
    The batches go to the model's device (a CUDA teacher gets CUDA batches), the results come back."""
    device = accel.device_of(model)
    model.eval()
    feats, logits = [], []
    seen = 0
    for x, y in data.batches("test", batch_size=500, device=device):  # in order: the labels are test_y's
        with accel.autocast(device):
            f = model.forward_features(x) if hasattr(model, "forward_features") else None
            z = model.forward_head(f) if f is not None else model(x)
        feats.append((f if f is not None else z).float().cpu())
        logits.append(z.float().cpu())
        seen += len(y)
        if limit and seen >= limit:
            break
    cat = lambda ts: torch.cat(ts)[:limit].numpy()  # noqa: E731
    return cat(feats), cat(logits), data.test_y[:seen][:limit].numpy().astype(int)


def softened(logits: np.ndarray, tau: float) -> np.ndarray:
    """``softmax(logits / tau)`` row by row."""
    z = np.asarray(logits, dtype=np.float64) / tau
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def count_peaks(probs: np.ndarray, rel: float = 0.5) -> np.ndarray:
    """Per row, the classes whose probability is at least ``rel`` x the row's largest one."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    return (probs >= rel * probs.max(axis=1, keepdims=True) - 1e-12).sum(axis=1)


def peak_summary(model: nn.Module, data: TensorData, *, tau: float, rel: float = 0.5) -> dict:
    """Over the test set: mean sorted softened probabilities, peak-count histogram, mean peaks."""
    _, logits, _ = _outputs(model, data)
    p = softened(logits, tau)
    peaks = count_peaks(p, rel)
    return {"tau": tau, "rel": rel, "mean_sorted": np.sort(p, axis=1)[:, ::-1].mean(axis=0).round(5).tolist(),
            "peaks_histogram": np.bincount(peaks, minlength=p.shape[1] + 1)[1:].tolist(),
            "mean_peaks": round(float(peaks.mean()), 4)}


def _pixels(img: np.ndarray, data: TensorData) -> np.ndarray:
    """A normalised (C, H, W) image back to (H, W, C) pixels in [0, 1]."""
    mean, std = np.array(data.mean)[:, None, None], np.array(data.std)[:, None, None]
    return np.clip(img * std + mean, 0, 1).transpose(1, 2, 0)


def plot_logits(teachers: dict[str, nn.Module], data: TensorData, *, tau: float, samples: int = 4,
                rel: float = 0.5) -> tuple[Figure, dict]:
    """Bars of ``softmax(z / tau)`` for ``samples`` test images (different classes), one column
    per teacher, and a bottom row over the whole test set. Returns ``(figure, numbers)``."""
    names = list(teachers)
    outs = {k: _outputs(m, data) for k, m in teachers.items()}
    labels = outs[names[0]][2]
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(data.num_classes) if (labels == c).any()][:samples]
    classes = [plot_text(c)[:20] for c in data.classes]
    xs = np.arange(data.num_classes)
    ncols = 1 + len(names)
    fig = Figure(figsize=(3.2 * ncols, 2.2 * (len(picks) + 1) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(picks) + 1, ncols)
    numbers = {"tau": tau, "rel": rel, "teachers": {}}
    for row, i in enumerate(picks):
        ax = fig.add_subplot(grid[row, 0])
        pix = data.test_x[i].permute(1, 2, 0).numpy() / 255.0
        ax.imshow(pix[..., 0] if pix.shape[2] == 1 else pix, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"test image {i}: '{classes[labels[i]]}'", fontsize=9)
        for col, name in enumerate(names, start=1):
            p = softened(outs[name][1][i:i + 1], tau)[0]
            ax = fig.add_subplot(grid[row, col])
            bars = ax.bar(xs, p, color=COLORS.get(name, f"C{col}"))
            bars[labels[i]].set_edgecolor("black")
            bars[labels[i]].set_linewidth(1.5)
            ax.set_ylim(0, 1)
            ax.set_xticks(xs, classes if len(classes) <= 20 else [""] * len(xs), fontsize=7)
            ax.set_title(f"{name}: {int(count_peaks(p, rel)[0])} peak(s)", fontsize=9)
            if col == 1:
                ax.set_ylabel(f"softmax(z/{tau:g})", fontsize=8)
    profile = fig.add_subplot(grid[-1, : max(1, ncols // 2)])
    hist = fig.add_subplot(grid[-1, max(1, ncols // 2):])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        p = softened(outs[name][1], tau)
        peaks = count_peaks(p, rel)
        mean_sorted = np.sort(p, axis=1)[:, ::-1].mean(axis=0)
        counts = np.bincount(peaks, minlength=data.num_classes + 1)[1:]
        color = COLORS.get(name, f"C{k}")
        profile.plot(np.arange(1, data.num_classes + 1), mean_sorted, marker="o", color=color, label=name)
        hist.bar(np.arange(1, data.num_classes + 1) + (k - (len(names) - 1) / 2) * width, counts / len(peaks),
                 width=width, color=color, label=f"{name} (mean {peaks.mean():.2f})")
        numbers["teachers"][name] = {"mean_sorted": mean_sorted.round(5).tolist(),
                                     "peaks_histogram": counts.tolist(), "mean_peaks": round(float(peaks.mean()), 4)}
    profile.set(xlabel="rank of the class", ylabel="mean probability", title=f"test set: sorted softmax(z/{tau:g})")
    profile.legend(fontsize=8)
    hist.set(xlabel=f"peaks (classes with p >= {rel:g} x max)", ylabel="share of test images",
             title="test set: number of peaks")
    hist.legend(fontsize=8)
    fig.suptitle(f"Softened outputs at tau {tau:g} on {data.name} test images (true class outlined)")
    return fig, numbers


def embed(arr: np.ndarray, *, seed: int = 0) -> np.ndarray | None:
    """A 2-D t-SNE of the rows of ``arr``, or ``None`` where every row is the same (t-SNE is
    undefined there, and scikit-learn's crashes the process). Any output is laid out: saturated
    (a temperature of 1e-30 makes logits of 1e31), one-hot, tiny, or with NaN/inf (taken as 0):
    the rows are centred and scaled to at most 1 first, which t-SNE's distances do not see."""
    from sklearn.manifold import TSNE

    a = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
    a = np.where(np.isfinite(a), a, 0.0)
    a = a - a.mean(axis=0, keepdims=True)
    scale = np.abs(a).max() if a.size else 0.0
    if len(a) < 3 or not scale > 0:
        return None
    a = a / scale
    if a.shape[1] < 2:  # one column (one class, one feature): PCA's start needs two
        a = np.concatenate([a, np.zeros_like(a)], axis=1)
    if np.unique(a.round(9), axis=0).shape[0] < 2:
        return None
    with np.errstate(all="ignore"):
        emb = TSNE(n_components=2, init="pca", random_state=seed,
                   perplexity=min(30.0, max(2.0, (len(a) - 1) / 3))).fit_transform(a)
    return np.where(np.isfinite(emb), emb, 0.0)


def plot_tsne(teachers: dict[str, nn.Module], data: TensorData, *, limit: int = 1000, seed: int = 0) -> Figure:
    """t-SNE of penultimate features and of logits of (up to ``limit``) test images, per teacher
    (:func:`embed`: any finite output; a panel of outputs that are all the same says so)."""
    names = list(teachers)
    fig = Figure(figsize=(9, 4.2 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in enumerate(names):
        feats, logits, labels = _outputs(teachers[name], data, limit)
        for col, (what, arr) in enumerate((("penultimate features", feats), ("logits", logits))):
            ax = axes[row, col]
            emb = embed(arr, seed=seed)
            if emb is None:  # a served model that answers the same to every image: nothing to lay out
                ax.text(0.5, 0.5, f"all {len(arr)} are the same:\nnothing to embed", ha="center", va="center",
                        transform=ax.transAxes)
                emb = np.zeros((len(arr), 2))
            sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10" if data.num_classes <= 10 else "tab20",
                            s=6, vmin=-0.5, vmax=data.num_classes - 0.5)
            ax.set_title(f"{name} teacher: {what}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    if data.num_classes <= 20:
        cbar = fig.colorbar(sc, ax=axes, ticks=range(data.num_classes), shrink=0.8)
        cbar.ax.set_yticklabels([plot_text(c)[:20] for c in data.classes], fontsize=8)
        cbar.set_label("class")
    fig.suptitle(f"t-SNE of {len(labels)} {data.name} test images")
    return fig


def plot_images(grids: dict[str, tuple[torch.Tensor, torch.Tensor]], data: TensorData, *, per_class: int = 2) -> Figure:
    """One mosaic per entry ``title -> (images, labels)`` (normalised images): a column per class,
    up to ``per_class`` images each; a blank cell where the teacher gave no image that class."""
    c = data.num_classes
    fig = Figure(figsize=(max(8.0, 0.7 * c), (0.7 * per_class + 0.8) * len(grids) + 0.5), layout="constrained")
    axes = fig.subplots(len(grids), 1, squeeze=False)[:, 0]
    _, h, w = data.input_shape
    for ax, (title, (images, labels)) in zip(axes, grids.items()):
        mosaic = np.ones((per_class * (h + 1), c * (w + 1), 3))
        images, labels = images.cpu(), labels.cpu()
        for k in range(c):
            mine = images[labels == k][:per_class].float().numpy()
            for r, img in enumerate(mine):
                pix = _pixels(img, data)
                mosaic[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = pix  # grey broadcasts to RGB
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_xticks([k * (w + 1) + w / 2 for k in range(c)], [plot_text(x)[:20] for x in data.classes], fontsize=8)
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Synthesised {data.name} images, one column per class the teacher assigns")
    return fig


def _sweep(sweep: dict | str | Path) -> dict:
    """A sweep file of ``bench/omega_sweep.py --json``, read and checked (a dict passes as it is)."""
    if isinstance(sweep, dict):
        return sweep
    from .errors import NastyError
    from .safety import read_json
    from .schema import Sweep, validate

    return validate(Sweep, read_json(sweep, error=NastyError), sweep, error=NastyError)


def plot_omega_curve(sweep: dict | str | Path) -> Figure:
    """Teacher accuracy and KD-student accuracy against omega, from ``bench/omega_sweep.py --json``."""
    sweep = _sweep(sweep)
    rows = sorted(sweep["summary"], key=lambda r: (r["epochs"], r["tau"], r["omega"]))
    students = [k[3:] for k in rows[0] if k.startswith("kd_")]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    omegas = [r["omega"] for r in rows]
    mean = lambda key: np.array([r[key][0] for r in rows])  # noqa: E731
    spread = lambda key: np.array([r[key][1] for r in rows])  # noqa: E731
    ax.errorbar(omegas, mean("nasty_accuracy"), yerr=spread("nasty_accuracy"), marker="o", color="black",
                capsize=3, label="nasty teacher")
    for k, s in enumerate(students):
        ax.errorbar(omegas, mean(f"kd_{s}"), yerr=spread(f"kd_{s}"), marker="s", color=f"C{k}", capsize=3,
                    label=f"KD -> {s}")
        scratch = sweep.get("baseline", {}).get(s, {}).get("scratch")
        if scratch:
            ax.axhline(scratch[0], color=f"C{k}", linestyle="--", linewidth=1, label=f"{s} from scratch")
    ax.set(xlabel="omega", ylabel="test accuracy (%)",
           title=plot_text(f"{sweep.get('dataset', '')} {sweep.get('arch', '')}: the omega trade-off "
                           f"(mean ± std over seeds {sweep.get('seeds', '')})"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_frontier(sweep: dict | str | Path, *, budget: float | None = 1.0) -> Figure:
    """The frontier a budget picks from: how far each KD student falls below its from-scratch
    accuracy against what the teacher gives up, one point per omega (``bench/omega_sweep.py --json``)."""
    sweep = _sweep(sweep)
    rows = sorted(sweep["summary"], key=lambda r: r["teacher_cost"][0])
    students = [k[3:] for k in rows[0] if k.startswith("kd_")]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cost = np.array([r["teacher_cost"][0] for r in rows])
    for k, s in enumerate(students):
        scratch = sweep["baseline"][s]["scratch"][0]
        below = np.array([scratch - r[f"kd_{s}"][0] for r in rows])
        ax.errorbar(cost, below, yerr=[r[f"kd_{s}"][1] for r in rows], marker="o", color=f"C{k}", capsize=3,
                    label=f"KD -> {s}")
        for x, y, r in zip(cost, below, rows):
            ax.annotate(f"{r['omega']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=f"C{k}")
    ax.axhline(0, color="grey", linewidth=1)
    ax.axhline(3, color="grey", linestyle=":", linewidth=1, label="3 points below scratch (the paper's CIFAR-10)")
    if budget is not None:
        ax.axvline(budget, color="black", linestyle="--", linewidth=1, label=f"budget {budget:g} points")
    ax.set(xlabel="teacher cost (points of test accuracy)", ylabel="student below scratch (points)",
           title=f"{sweep.get('dataset', '')} {sweep.get('arch', '')}: damage against cost\n"
                 f"(point labels: omega; mean ± std over seeds {sweep.get('seeds', '')})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_search(card: dict) -> Figure:
    """A budgeted search (``card['search']`` of a hardened run): each trial's validation cost and
    the probe's damage, the budget, and the trial chosen."""
    sr = card["search"]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for t in sr["trials"]:
        if t.get("val_cost") is None:
            continue
        measured = "damage" in t
        chosen = t["trial"] == sr.get("chosen")
        ax.scatter([t["val_cost"]], [t["damage"] if measured else 0.0], s=80 if chosen else 40,
                   marker="o" if measured else "x", color="C3" if chosen else ("C0" if measured else "grey"),
                   zorder=3)
        key = sr.get("strength_name", "omega")  # cmi_weight for a CMIM search
        ax.annotate(f"{key} {t[key]:.3g}" + (" (chosen)" if chosen else "" if measured else " (over budget)"),
                    (t["val_cost"], t["damage"] if measured else 0.0), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.axvline(sr["max_cost"], color="black", linestyle="--", linewidth=1, label=f"budget {sr['max_cost']:g} points")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set(xlabel="validation cost (points, against a plain run)",
           ylabel=f"probe {sr['probe']['student']}: points below scratch",
           title=f"{card.get('dataset', '')} {card.get('arch', '')}: budgeted search, {len(sr['trials'])} trials")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Figure, out, *, numbers: dict | None = None, dpi: int = 100) -> Path:
    """Write ``fig`` to ``out`` (PNG) and, if given, ``numbers`` to the JSON file beside it."""
    from .checkpoint import atomic_write, write_json

    out = Path(out)
    check_figure_path(out, numbers=numbers is not None)
    atomic_write(out, lambda p: fig.savefig(p, dpi=dpi, format=out.suffix.lstrip(".") or "png"))
    if numbers is not None:
        write_json(out.with_suffix(".json"), numbers)
    return out


FIGURE_FORMATS = (".png", ".pdf", ".svg")
# files of a run or an audit that a figure (or the numbers beside it) must never replace
PROTECTED = ("card.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "report.json", "report.md",
             "report.html")


def check_figure_path(out: Path, *, numbers: bool) -> None:
    """A figure goes to ``.png``/``.pdf``/``.svg``; neither it nor its numbers (``.json`` beside it)
    may land on a run's or an audit's own files, or in an audit's ``cells``."""
    from .errors import NastyError

    if out.suffix.lower() not in FIGURE_FORMATS:
        raise NastyError(f"{one_line(out)}: a figure is written as {', '.join(FIGURE_FORMATS)}, "
                         f"not {one_line(out.suffix) or 'a file without extension'}")
    for target in (out, out.with_suffix(".json")) if numbers else (out,):
        if target.name in PROTECTED or target.parent.name == "cells":
            raise NastyError(f"{one_line(target)} is a run's or an audit's own file; write the figure elsewhere")


def render(what: str, *, out, teacher=None, reference=None, sweep=None, tau: float | None = None, per_class: int = 2,
           seed: int = 0, synthesize=None, **brought: Unpack[Brought]) -> Path:
    """What ``nasty plot`` does: build one figure and write it (with its numbers as JSON for ``logits``).
    ``brought`` describes weights that do not record what they are (:class:`nasty.released.Brought`).
    The teachers answer through their cards' output transforms (what is served).

    ``images`` needs ``synthesize(models, data, tau=, count=, seed=)`` -> ``{title: (images, labels)}``
    (the data-free attacks live in ``attacks/``, a layer above this one: ``attacks.synthesized_grids``)."""
    from .errors import NastyError
    from .released import open_models

    check_figure_path(Path(out), numbers=what == "logits")  # before anything is loaded
    if what in ("omega", "frontier"):
        if not sweep:
            raise NastyError(f"nasty plot {what} needs `sweep` FILE.json (from bench/omega_sweep.py --json)")
        try:
            fig = (plot_omega_curve if what == "omega" else plot_frontier)(sweep)
        except (NastyError, KeyError, TypeError, IndexError, ValueError) as e:  # frontier reads extra columns
            raise NastyError(f"`sweep`: not a bench/omega_sweep.py JSON: {one_line(e)}") from None
        return save_figure(fig, out)
    if not teacher:
        raise NastyError(f"nasty plot {what} needs `teacher` (a run directory)")
    if what == "search":
        from .checkpoint import read_card

        card = read_card(teacher)
        if not isinstance(card.get("search"), dict):
            raise NastyError(f"`teacher` {teacher} holds no budgeted search (a normal run, or hardened with a fixed omega)")
        try:
            return save_figure(plot_search(card), out)
        except (KeyError, TypeError, ValueError) as e:
            raise NastyError(f"`teacher` {teacher}: the card's search trace is malformed ({type(e).__name__}: {e})") from None
    sources = {name: source for name, source in (("teacher", teacher), ("reference", reference)) if source}
    opened, data = open_models(sources, served=True, **brought)
    models = {}
    for one in opened[::-1]:  # the reference's first
        name = plot_text(one.card.get("kind") or one.name)
        models[name if name not in models else f"{name} ({one.name})"] = one.model
    card = opened[0].card
    tau = tau or card.get("tau") or 4.0
    if what == "logits":
        fig, numbers = plot_logits(models, data, tau=tau)
        return save_figure(fig, out, numbers=numbers)
    if what == "tsne":
        return save_figure(plot_tsne(models, data, seed=seed), out)
    if what == "images":
        if synthesize is None:
            raise NastyError("nasty plot images: no image synthesizer given (the CLI passes attacks.synthesized_grids)")
        count = per_class * data.num_classes * 2  # the teacher chooses the classes: leave room
        grids = synthesize(models, data, tau=tau, count=count, seed=seed)
        return save_figure(plot_images(grids, data, per_class=per_class), out)
    raise NastyError(f"unknown plot {what!r}; choose logits, tsne, images, omega, frontier or search")


def audit_figures(models: dict[str, nn.Module], data: TensorData, *, tau: float,
                  grids: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, seed: int = 0,
                  per_class: int = 2) -> dict[str, tuple[Figure, dict | None]]:
    """The figures an audit report shows: logit peaks, t-SNE, and ``grids`` (title -> images and the
    teacher's labels), the images the audit's data-free attacks synthesised while it trained."""
    makers = {"logits": lambda: plot_logits(models, data, tau=tau),
              "tsne": lambda: (plot_tsne(models, data, seed=seed), None)}
    if grids:
        makers["images"] = lambda: (plot_images(grids, data, per_class=per_class), None)
    figures = {}
    for name, make in makers.items():  # a figure that fails costs the report that figure, never the report
        try:
            figures[name] = make()
        except Exception as e:  # noqa: BLE001 - matplotlib, scikit-learn, numpy: whatever a plot meets
            warnings.warn(NastyWarning(f"the report is written without its {name} figure, which failed "
                                       f"({type(e).__name__}: {first_line(e)})"))
    return figures
