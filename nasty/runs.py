"""The two jobs behind ``nasty train`` and ``nasty harden``, callable from Python too.

    from nasty.runs import train, harden
    normal = train(dataset="digits", out="runs/normal")
    nasty = harden(teacher="runs/normal", out="runs/nasty")     # returns the card (a dict)

Options left as ``None`` take the dataset's recipe (:mod:`nasty.recipes`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from . import checkpoint as ckpt
from . import distributed
from .data import TensorData, load_dataset
from .errors import BudgetNotMet, NastyError, TrainingStopped, one_line
from .models import create_model
from .recipes import recipe_for
from .released import Brought, check_accuracy, label, open_models
from .safety import temp_beside
from .search import METHODS, Budget, hardening_objective, search_strength
from .trainer import Guard, TrainConfig, evaluate, fit, resolve_device

if TYPE_CHECKING:
    from typing_extensions import Unpack

RUN_FILES = (ckpt.WEIGHTS, ckpt.CARD, ckpt.STATE, ckpt.METRICS, "search")  # search/: the budgeted search's trials


def prepare_out(out, *, resume: bool | None, force: bool, world: distributed.World | None = None) -> Path:
    """Refuse to mix two runs in one folder: an existing run needs ``resume`` or ``force``
    (``resume=None``: a command that cannot resume, whose message names ``force`` alone).
    (Every rank checks; rank 0 alone clears and creates, then the others go on.)"""
    out = Path(out).expanduser()
    w = world or distributed.World()
    if out.exists() and not out.is_dir():
        raise NastyError(f"`out` {out} is a file, not a folder")
    present = [f for f in RUN_FILES if (out / f).exists()]
    if present and not resume and not force:
        raise NastyError(f"`out` {out} already holds a run ({', '.join(present)}); "
                         + ("pass `force` to replace it" if resume is None else
                            "pass `resume` to continue it or `force` to start over"))
    if w.main:
        _clear_out(out, [f for f in present if not resume])
    distributed.barrier(w)
    return out


def _clear_out(out: Path, stale: list[str]) -> None:
    import shutil

    try:
        for f in stale:  # a link is removed, never followed; a real folder (search/) with what it holds
            shutil.rmtree(out / f) if (out / f).is_dir() and not (out / f).is_symlink() else (out / f).unlink()
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temps(out)
        fd, probe = temp_beside(out / ".write-test")  # a new file of a random name, never one found there
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise NastyError(f"`out` {out} is not writable: {e.strerror or e}") from None


def _config(recipe, epochs, batch_size, lr, seed) -> TrainConfig:
    cfg = TrainConfig(epochs=epochs or recipe.epochs, batch_size=batch_size or recipe.batch_size,
                      lr=lr or recipe.lr, seed=seed)
    cfg.check()
    return cfg


def _seeded_model(arch, data, seed):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=data.num_classes, in_chans=data.input_shape[0])


def train(*, dataset: str = "digits", data_root=None, download: bool = False, train_fraction: float = 1.0,
          flip: bool | None = None, arch: str | None = None, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          seed: int = 0, device: str = "auto", out="runs/normal", resume: bool = False, force: bool = False,
          quiet: bool = False, compile: bool = False) -> dict:
    """Train a normal teacher (cross-entropy only) and write its run directory.

    ``flip``: random horizontal flips (``None``: the dataset's choice); the card records it, and
    ``harden`` and the audit train on the data as it says.
    Under ``torchrun`` this is one rank of a DistributedDataParallel run (:mod:`nasty.distributed`)."""
    data = load_dataset(dataset, root=data_root, download=download, train_fraction=train_fraction, flip=flip)
    recipe = recipe_for(data.name, data.num_classes)
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


def harden(*, teacher, expect_accuracy: float | None = None, epochs: int | None = None, batch_size: int | None = None,
           lr: float | None = None, omega: float | None = None, tau: float | None = None, init: str = "scratch",
           method: str = "nasty", cmi_weight: float | None = None, max_cost: float | None = None, budget: Budget | None = None, seed: int = 0, device: str = "auto",
           out="runs/nasty", resume: bool = False, force: bool = False, collapse_margin: float | None = 20.0,
           quiet: bool = False, compile: bool = False, echo=None, **brought: Unpack[Brought]) -> dict:
    """Train a nasty teacher against the frozen ``teacher`` (the adversary) and write its run.

    Without ``omega``, the strength is searched for (:mod:`nasty.search`): the strongest
    measured damage to a KD probe whose validation cost stays within ``max_cost`` points
    (default 1.0); the search's trials live in ``out/search/`` and its trace in the card.
    With ``omega``, that fixed strength is used (no search).
    ``method`` picks the objective (:data:`nasty.search.METHODS`): ``nasty`` (self-undermining
    against the adversary, strength ``omega``) or ``cmim`` (CE plus the conditional mutual
    information of the outputs given the class, :func:`nasty.objectives.cmim_loss`, strength
    ``cmi_weight``); the search and a fixed strength work alike for both, and the card records
    ``method`` and the strength under its name.
    ``init='scratch'`` (the paper) starts from random weights of the same architecture;
    ``init='teacher'`` fine-tunes a copy of the released weights.

    ``teacher`` is a run directory, a weights file or an ``nn.Module``; ``brought`` says what it
    does not record and where the data is (:class:`nasty.released.Brought`: ``arch``, ``dataset``
    or ``data``, ``mean``/``std`` or ``normalization``, ``inputs``, ...). The released model's
    preprocessing is what the nasty teacher is trained and recorded with. Before any
    training, the adversary must score near ``expect_accuracy`` (else its card's accuracy; with
    neither, above chance level): a model that does not is almost always fed the wrong preprocessing.
    """
    if init not in ("scratch", "teacher"):
        raise NastyError(f"`init` must be 'scratch' or 'teacher', got {init!r}")
    key = _strength_name(method, omega=omega, cmi_weight=cmi_weight)
    strength = omega if method == "nasty" else cmi_weight
    if strength is not None and max_cost is not None:
        raise NastyError(f"give either `{key}` (a fixed strength) or `max_cost` (a budget to search within), not both")
    [(_, _, known, adversary)], data = open_models({"teacher": teacher}, **brought)
    arch = known["arch"]
    recipe = recipe_for(data.name, data.num_classes)
    cfg = _config(recipe, epochs, batch_size, lr, seed)
    tau = recipe.tau if tau is None else tau
    if strength is not None and not strength >= 0:
        raise NastyError(f"`{key}` must be >= 0, got {strength}")
    if tau <= 0:
        raise NastyError(f"`tau` must be > 0, got {tau}")
    searching = strength is None
    budget = _budget(budget, max_cost=max_cost, init=init, key=key) if searching else None
    with distributed.joined(resolve_device(device)) as (w, dev):
        distributed.check_batch(cfg.batch_size, w)
        if searching and w.active:
            raise NastyError(f"the budgeted search runs in one process; under torchrun give a fixed `{key}` "
                             "(e.g. the one a single-process search chose)")
        adversary = adversary.to(dev)
        adv_acc = evaluate(adversary, data, device=dev)["accuracy"]
        check_accuracy(adv_acc, data=data, what=f"`teacher` {label(teacher)}",
                       expected=known.get("accuracy") if expect_accuracy is None else expect_accuracy)
        out = prepare_out(out, resume=resume, force=force, world=w)
        trace = None
        if searching:
            trace = search_strength(adversary, arch=arch, data=data, config=cfg, tau=tau,
                                    omega0=recipe.omega if method == "nasty" else recipe.cmi_weight,
                                    budget=budget, students=recipe.students, out=out / "search", device=dev,
                                    quiet=quiet, echo=echo, method=method)
            strength = trace[key] if trace[key] is not None else _cheapest(trace, key)
        model = _seeded_model(arch, data, seed)
        if init == "teacher":
            model.load_state_dict(adversary.state_dict())
        guard = _collapse_guard(cfg, omega=strength, margin=collapse_margin, adversary_accuracy=adv_acc, data=data,
                                name=key)
        run_card = {"nasty_version": __version__, "kind": "nasty", "arch": arch, key: strength, "tau": tau,
                    "init": init, "adversary": _adversary_card(teacher, known, accuracy=adv_acc)}
        if method != "nasty":  # a nasty card without it is the paper's method (every card before CMIM)
            run_card["method"] = method
        if trace is not None:
            run_card["search"] = trace
        try:
            final = fit(model, data, config=cfg, objective=hardening_objective(method, strength, tau=tau),
                        reference=adversary, eval_tau=tau, device=dev, out=out, card=run_card, resume=resume,
                        quiet=quiet, guard=guard, desc=f"harden {arch}", compile=compile, world=w,
                        divergence_hint=f"try a smaller `{key}` than {strength:g} or a smaller `lr`")
        except TrainingStopped:
            if w.main and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # stopped before its first checkpoint: leave no empty --out behind
            raise
        final["teacher_cost"] = round(adv_acc - final["accuracy"], 4)
        if trace is not None:
            final["search"] = {**trace, "cost_ratio": round(trace["seconds"] / max(final["seconds"], 1e-9), 2)}
        if w.main:
            ckpt.write_json(out / ckpt.CARD, final)
    if trace is not None and trace[key] is None:
        raise BudgetNotMet(final, f"no hardening fits the budget of {budget.max_cost:g} points: the cheapest trial "
                         f"({key} {strength:g}) costs {_cost_of(trace, strength, key)} on validation; it is kept in "
                         f"{out} (raise the budget, or give a fixed `{key}`)")
    return final


def _strength_name(method: str, *, omega: float | None, cmi_weight: float | None) -> str:
    """The name of ``method``'s strength; the other method's strength given with it is refused."""
    if method not in METHODS:
        raise NastyError(f"`method` must be one of {', '.join(METHODS)}, got {one_line(method)[:40]!r}")
    for other, value in (("omega", omega), ("cmi_weight", cmi_weight)):
        if value is not None and other != METHODS[method]:
            owner = next(m for m, k in METHODS.items() if k == other)
            raise NastyError(f"`{other}` is the strength of `method` {owner}, not of {method}; "
                             f"give `{METHODS[method]}` (or neither, to search for it)")
    return METHODS[method]


def _budget(budget: Budget | None, *, max_cost: float | None, init: str, key: str = "omega") -> Budget:
    """The search's budget: ``budget`` (else the default) with ``max_cost`` over it, checked."""
    budget = replace(budget or Budget(), **({} if max_cost is None else {"max_cost": max_cost}))
    budget.check()
    if init != "scratch":
        raise NastyError(f"the budgeted search trains from scratch; give `{key}` with `init` teacher")
    return budget


def _collapse_guard(cfg: TrainConfig, *, omega: float, margin: float | None, adversary_accuracy: float,
                    data: TensorData, name: str = "omega") -> Guard | None:
    """The guard judges hardening only (omega 0 is plain training), and only after warm-up: its
    margin applies after the first LR drop, its chance-level check from the second epoch on."""
    if not (omega > 0 and margin):
        return None
    first_drop = max(1, round(min(cfg.milestones) * cfg.epochs))
    return Guard(reference_accuracy=adversary_accuracy, margin=margin, start=first_drop + 1,
                 chance=100.0 / data.num_classes, early_start=max(2, cfg.epochs // 4),
                 hint=f"try a smaller `{name}` than {omega:g}, or relax the guard (`collapse_margin`, 0 turns it off)")


def _adversary_card(teacher, known: dict, *, accuracy: float) -> dict:
    """What a nasty teacher's card records of the model it was hardened against."""
    imported_from = known["source"].get("sha256") if isinstance(known.get("source"), dict) else None
    return {"source": label(teacher), "arch": known["arch"], "accuracy": round(accuracy, 4),
            "sha256": known.get("sha256"),
            **{k: v for k, v in (("kind", known.get("kind")), ("source_sha256", imported_from)) if v}}


def import_weights(*, weights, expect_accuracy: float | None = None, device: str = "auto", out="runs/imported",
                   force: bool = False, **brought: Unpack[Brought]) -> dict:
    """Turn a released model (a weights file or an ``nn.Module``) into a run directory that every command
    takes: ``model.safetensors`` + a card of kind ``imported`` (arch, dataset, normalisation, the
    source's sha256 and the test accuracy measured here, with that normalisation). ``brought`` says
    what the weights do not record (:class:`nasty.released.Brought`)."""
    [(_, _, known, model)], data = open_models({"weights": weights}, **brought)
    dev = resolve_device(device)
    model = model.to(dev)
    acc = evaluate(model, data, device=dev)["accuracy"]
    check_accuracy(acc, data=data, expected=expect_accuracy, what=f"`weights` {label(weights)}")
    out = prepare_out(out, resume=None, force=force)
    card = {"nasty_version": __version__, "kind": "imported", "arch": known["arch"], **data.describe(),
            "accuracy": round(acc, 4), "source": {"path": label(weights), "sha256": known.get("sha256")}}
    for key in ("train_fraction", "train_size", *(("flip",) if brought.get("flip") is None else ())):
        card.pop(key, None)  # nothing was trained here (flips only where the user stated them)
    return ckpt.save_release(out, model, card)


def _cheapest(trace: dict, key: str = "omega") -> float:
    """The strength (``key``) of the least costly trial that did not collapse (else half the smallest tried)."""
    ran = [t for t in trace["trials"] if t["val_cost"] is not None]
    if ran:
        return min(ran, key=lambda t: (t["val_cost"], t[key]))[key]
    return min(t[key] for t in trace["trials"]) / 2


def _cost_of(trace: dict, omega: float, key: str = "omega") -> str:
    row = next((t for t in trace["trials"] if t[key] == omega and t["val_cost"] is not None), None)
    return f"{row['val_cost']:+.2f} points" if row else "an unknown amount (every trial collapsed)"


def defend(*, teacher, transform: dict, out="runs/defended", force: bool = False, unsafe_pickle: bool = False,
           max_cost: float | None = None, data_root=None, download: bool = False, device: str = "cpu") -> dict:
    """A serving-time defence of ``teacher``: the same weights plus an output transform
    (:mod:`nasty.defences`), written as a run directory of its own; no retraining.
    Works on a normal and on a nasty run alike; the transform replaces any the teacher had.

    The card states what is served: its ``accuracy`` is the served model's, measured here on the
    test split (``accuracy_unserved``: the same weights without the transform, measured alike;
    ``defence_cost``: the difference). A defence that costs more than ``max_cost`` points (the
    budget ``harden`` searches within, :class:`nasty.search.Budget`, by default) is written all the
    same, with a one-line warning."""
    import shutil
    import warnings

    from .defences import Defended, create_transform, describe
    from .errors import NastyWarning

    max_cost = Budget().max_cost if max_cost is None else max_cost
    if not max_cost >= 0:
        raise NastyError(f"`max_cost` must be >= 0 points, got {max_cost}")
    served = create_transform(transform)  # malformed settings fail before anything is written
    src = ckpt.require_run(teacher, command="defend")
    card = ckpt.read_card(src)
    out = Path(out).expanduser()
    if out.resolve() == src.resolve():
        raise NastyError("`out` must be a new folder, not the teacher's own run directory")
    [bare], data = open_models({"teacher": src}, unsafe_pickle=unsafe_pickle, data_root=data_root, download=download)
    dev = resolve_device(device)
    unserved = evaluate(bare.model.to(dev), data, device=dev)["accuracy"]
    accuracy = evaluate(Defended(bare.model, served).to(dev), data, device=dev)["accuracy"]
    out = prepare_out(out, resume=None, force=force)
    ckpt.atomic_write(out / ckpt.WEIGHTS, lambda p: shutil.copyfile(src / ckpt.WEIGHTS, p))
    card = {**card, "output_transform": dict(transform), "defence": describe(transform), "defended_from": str(src),
            "accuracy": round(accuracy, 4), "accuracy_unserved": round(unserved, 4),
            "defence_cost": round(unserved - accuracy, 4), "sha256": ckpt.sha256_file(out / ckpt.WEIGHTS)}
    adversary = card.get("adversary") if isinstance(card.get("adversary"), dict) else {}
    if isinstance(adversary.get("accuracy"), (int, float)):  # a nasty teacher's cost, of what is served
        card["teacher_cost"] = round(adversary["accuracy"] - accuracy, 4)
    ckpt.write_json(out / ckpt.CARD, card)
    if unserved - accuracy > max_cost:
        warnings.warn(NastyWarning(
            f"the defence {describe(transform)} costs {unserved - accuracy:.2f} points of test accuracy "
            f"({unserved:.2f}% -> {accuracy:.2f}% served), more than the budget of {max_cost:g} points (`max_cost`); "
            f"its card states the served accuracy"))
    return card
