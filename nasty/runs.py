"""The two jobs behind ``nasty train`` and ``nasty harden``, callable from Python too.

    from nasty.runs import train, harden
    normal = train(dataset="digits", out="runs/normal")
    nasty = harden(teacher="runs/normal", out="runs/nasty")     # returns the card (a dict)

Options left as ``None`` take the dataset's recipe (:mod:`nasty.recipes`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__
from . import checkpoint as ckpt
from . import distributed
from .data import load_dataset
from .errors import NastyError
from .models import create_model
from .recipes import RECIPES
from .safety import temp_beside
from .trainer import Guard, TrainConfig, evaluate, fit, objective_for, resolve_device

RUN_FILES = (ckpt.WEIGHTS, ckpt.CARD, ckpt.STATE, ckpt.METRICS)


def prepare_out(out, *, resume: bool, force: bool, world: distributed.World | None = None) -> Path:
    """Refuse to mix two runs in one folder: an existing run needs --resume or --force.
    (Every rank checks; rank 0 alone clears and creates, then the others go on.)"""
    out = Path(out).expanduser()
    w = world or distributed.World()
    if out.exists() and not out.is_dir():
        raise NastyError(f"--out {out} is a file, not a folder")
    present = [f for f in RUN_FILES if (out / f).exists()]
    if present and not resume and not force:
        raise NastyError(f"--out {out} already holds a run ({', '.join(present)}); "
                         f"pass --resume to continue it or --force to start over")
    if w.main:
        _clear_out(out, [f for f in present if not resume])
    distributed.barrier(w)
    return out


def _clear_out(out: Path, stale: list[str]) -> None:
    try:
        for f in stale:
            (out / f).unlink()  # a link is removed, never followed
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temps(out)
        fd, probe = temp_beside(out / ".write-test")  # a new file of a random name, never one found there
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise NastyError(f"--out {out} is not writable: {e.strerror or e}") from None


def _config(recipe, epochs, batch_size, lr, seed) -> TrainConfig:
    cfg = TrainConfig(epochs=epochs or recipe.epochs, batch_size=batch_size or recipe.batch_size,
                      lr=lr or recipe.lr, seed=seed)
    cfg.check()
    return cfg


def _seeded_model(arch, data, seed):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=data.num_classes, in_chans=data.input_shape[0])


def train(*, dataset: str = "digits", data_root=None, download: bool = False, train_fraction: float = 1.0,
          arch: str | None = None, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          seed: int = 0, device: str = "auto", out="runs/normal", resume: bool = False, force: bool = False,
          quiet: bool = False, compile: bool = False) -> dict:
    """Train a normal teacher (cross-entropy only) and write its run directory.

    Under ``torchrun`` this is one rank of a DistributedDataParallel run (:mod:`nasty.distributed`)."""
    data = load_dataset(dataset, root=data_root, download=download, train_fraction=train_fraction)
    recipe = RECIPES[data.name]
    cfg = _config(recipe, epochs, batch_size, lr, seed)
    arch = arch or recipe.arch
    with distributed.joined(resolve_device(device)) as (w, dev):
        distributed.check_batch(cfg.batch_size, w)
        model = _seeded_model(arch, data, seed)
        out = prepare_out(out, resume=resume, force=force, world=w)
        card = {"nasty_version": __version__, "kind": "normal", "arch": arch, "omega": 0.0, "tau": None}
        final = fit(model, data, config=cfg, device=dev, out=out, card=card, resume=resume, quiet=quiet,
                    desc=f"train {arch}", compile=compile, world=w)
    return final


def harden(*, teacher, arch: str | None = None, dataset: str | None = None, data_root=None, download: bool = False,
           train_fraction: float = 1.0, epochs: int | None = None, batch_size: int | None = None,
           lr: float | None = None, omega: float | None = None, tau: float | None = None, init: str = "scratch",
           seed: int = 0, device: str = "auto", out="runs/nasty", resume: bool = False, force: bool = False,
           unsafe_pickle: bool = False, collapse_margin: float = 20.0, quiet: bool = False,
           compile: bool = False) -> dict:
    """Train a nasty teacher against the frozen ``teacher`` (the adversary) and write its run.

    ``init='scratch'`` (the paper) starts from random weights of the same architecture;
    ``init='teacher'`` fine-tunes a copy of the released weights.
    """
    if init not in ("scratch", "teacher"):
        raise NastyError(f"--init must be 'scratch' or 'teacher', got {init!r}")
    weights, known = ckpt.load_weights(teacher, unsafe_pickle=unsafe_pickle)  # fail fast, before loading data
    if not (arch or known.get("arch")):
        raise NastyError(f"--teacher {teacher} does not record its architecture; pass --arch (see `nasty models`)")
    dataset = dataset or known.get("dataset")
    if not dataset:
        raise NastyError(f"--teacher {teacher} does not record its dataset; pass --dataset")
    data = load_dataset(dataset, root=data_root, download=download, train_fraction=train_fraction)
    recipe = RECIPES[data.name]
    cfg = _config(recipe, epochs, batch_size, lr, seed)
    omega = recipe.omega if omega is None else omega
    tau = recipe.tau if tau is None else tau
    if omega < 0:
        raise NastyError(f"--omega must be >= 0, got {omega}")
    if tau <= 0:
        raise NastyError(f"--tau must be > 0, got {tau}")
    with distributed.joined(resolve_device(device)) as (w, dev):
        distributed.check_batch(cfg.batch_size, w)
        adversary = ckpt.build_model(weights, known, source=teacher, arch=arch, num_classes=data.num_classes,
                                     in_chans=data.input_shape[0]).to(dev).eval()
        arch = arch or known["arch"]
        adv_acc = evaluate(adversary, data, device=dev)["accuracy"]
        model = _seeded_model(arch, data, seed)
        if init == "teacher":
            model.load_state_dict(adversary.state_dict())
        out = prepare_out(out, resume=resume, force=force, world=w)
        # the guard's margin applies after the first LR drop
        first_drop = max(1, round(min(cfg.milestones) * cfg.epochs))
        guard = Guard(reference_accuracy=adv_acc, margin=collapse_margin, start=first_drop + 1,
                      chance=100.0 / data.num_classes, early_start=max(1, cfg.epochs // 4),
                      hint=f"try a smaller --omega than {omega:g}")
        adversary_card = {"source": str(teacher), "arch": arch, "accuracy": round(adv_acc, 4),
                          "sha256": known.get("sha256")}
        run_card = {"nasty_version": __version__, "kind": "nasty", "arch": arch, "omega": omega, "tau": tau,
                    "init": init, "adversary": adversary_card}
        final = fit(model, data, config=cfg, objective=objective_for("nasty", omega=omega, tau=tau),
                    reference=adversary, eval_tau=tau, device=dev, out=out, card=run_card, resume=resume,
                    quiet=quiet, guard=guard, desc=f"harden {arch}", compile=compile, world=w,
                    divergence_hint=f"try a smaller --omega than {omega:g} or a smaller --lr")
        final["teacher_cost"] = round(adv_acc - final["accuracy"], 4)
        if w.main:
            ckpt.write_json(out / ckpt.CARD, final)
    return final
