"""Budgeted hardening: the strongest hardening whose accuracy cost stays within a budget.

    trace = search_strength(adversary, arch, data, budget=Budget(max_cost=1.0), ...)

The user gives one number, ``max_cost``: the points of accuracy they accept to lose. Every
choice is made on a validation split carved from the training set (stratified, seeded); the
test set is never read here.

1. A plain run (omega 0) of the same architecture and schedule on the rest of the training
   set: its validation accuracy is what hardening costs against.
2. A probe student (a small architecture) trained from scratch on the same images: the
   baseline of the damage.
3. Trials on a ladder of log-omega: start at the dataset's omega, double while the validation
   cost stays within the budget, halve while it does not, then bisect the bracket
   geometrically. Each trial hardens from scratch and distils the probe student from it
   (standard KD at the hardening temperature); its **damage** is the probe's validation
   accuracy from scratch minus from the trial.
4. The chosen strength is the affordable trial with the largest measured damage (not the
   largest omega: damage is measured, not assumed).

The same search serves every hardening method (:data:`METHODS`): the ladder climbs the method's
own strength (``omega`` for nasty, ``cmi_weight`` for CMIM), and each trial row records it under
that name and as ``strength``, beside ``method``.

With ``Budget(select="value")`` (``nasty harden --select value``) the choice is the audit's
measure instead: each affordable trial also trains the probe by KD at tau 1 and as a thief of
the top-1 answers, and a label-smoothing probe is trained once; the trial's **value** is the best
probe that reads the outputs (KD at tau 1 or at the hardening tau) less the best probe from labels
alone (scratch, label smoothing, the top-1 thief), and the chosen trial is the affordable one of
least value (the stronger on a tie). Every probe's accuracy is in the trial's row (``probes``).

Every trial is a run directory under ``out/`` (resumable mid-trial) and a JSON line of
results, so an interrupted search goes on where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .data import TensorData
from .errors import NastyError, TrainingStopped
from .models import create_model
from .trainer import Guard, TrainConfig, fit, objective_for

__all__ = ["Budget", "search_strength", "next_omega", "METHODS", "hardening_objective"]

# hardening method -> the name of its strength (the option the user gives, the card's field)
METHODS = {"nasty": "omega", "cmim": "cmi_weight"}


def hardening_objective(method: str, strength: float, *, tau: float):
    """The training objective of ``method`` at ``strength`` (:func:`nasty.trainer.objective_for`)."""
    if method == "nasty":
        return objective_for("nasty", omega=strength, tau=tau)
    if method == "cmim":
        return objective_for("cmim", weight=strength)
    raise NastyError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")


@dataclass(frozen=True)
class Budget:
    """What the search may spend and how it measures."""

    max_cost: float = 1.0  # points of validation accuracy the user gives up at most
    validation: float = 0.2  # fraction of the training set held out for every choice
    max_trials: int = 3  # hardening trials (each a full run on the rest of the training set)
    probe: str | None = None  # probe student architecture [the dataset's first audit student]
    probe_epochs: int | None = None  # [half the hardening epochs]
    probe_alpha: float = 0.9
    select: str = "damage"  # damage: the KD probe's damage; value: the best-response value beyond labels (below)

    def check(self) -> None:
        if not self.max_cost >= 0:
            raise NastyError(f"the accuracy budget must be >= 0 points, got {self.max_cost}")
        if not 0 < self.validation < 1:
            raise NastyError(f"the validation fraction must be in (0, 1), got {self.validation}")
        if self.max_trials < 1:
            raise NastyError(f"the search needs at least one trial, got {self.max_trials}")
        if self.select not in ("damage", "value"):
            raise NastyError(f"`select` must be damage or value, got {self.select!r}")


def next_omega(trials: list[dict], omega0: float, *, resolution: float = 1.25, key: str = "omega") -> float | None:
    """The next omega on the ladder, or ``None`` when the bracket is as narrow as ``resolution``.

    Affordable trials raise the lower end, too costly ones (or collapsed ones) the upper end;
    without an upper end omega doubles, without a lower end it halves, else the geometric middle.
    ``key``: the trials' field holding the strength (``omega``; ``cmi_weight`` for CMIM).
    """
    if not trials:
        return omega0
    ok = [t[key] for t in trials if t["affordable"]]
    bad = [t[key] for t in trials if not t["affordable"]]
    lo, hi = (max(ok) if ok else None), (min(bad) if bad else None)
    if hi is None:
        return lo * 2.0
    if lo is None:
        return hi / 2.0
    if hi / lo <= resolution:
        return None
    return math.sqrt(lo * hi)


SMOOTHING = 0.1  # the label-smoothing probe's (the audit's baseline)


def _smoothed(z, y, _ref):
    ce = F.cross_entropy(z.float(), y, label_smoothing=SMOOTHING)
    return ce, {"ce": ce.detach()}


def _top1_thief(z, y, ref):
    """The thief of the top-1 answers: cross-entropy on the teacher's argmax, not the true label."""
    ce = F.cross_entropy(z.float(), ref.argmax(dim=1))
    return ce, {"ce": ce.detach()}


def _beyond_labels(base: dict, outputs: dict[str, float], top1: float) -> dict:
    """A trial's best-response value beyond labels: the best probe that reads the outputs less the
    best probe from labels alone (scratch, label smoothing, the top-1 thief); every probe recorded."""
    labels = {"scratch": base["probe_scratch"], "label-smoothing": base["probe_label_smoothing"], "top1-thief": top1}
    best_out, best_lab = max(outputs, key=outputs.get), max(labels, key=labels.get)
    return {"probes": {**outputs, **labels}, "best_outputs": best_out, "best_labels": best_lab,
            "value": round(outputs[best_out] - labels[best_lab], 4)}


def _model(arch: str, data: TensorData, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, num_classes=data.num_classes, in_chans=data.input_shape[0])


def _run(out: Path, model: nn.Module, data: TensorData, *, config, objective=None, reference=None, eval_tau=None,
         device, guard=None, card: dict, desc: str, quiet: bool) -> dict:
    """One resumable training run in ``out`` (its own run directory): the model ends trained."""
    return fit(model, data, config=config, objective=objective, reference=reference, eval_tau=eval_tau,
               device=device, out=out, card=card, resume=True, quiet=quiet, guard=guard, desc=desc)


def _cached(path: Path, compute):
    """A JSON result stored at ``path`` (computed once; a rerun reads it back)."""
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: compute again
    result = compute()
    ckpt.write_json(path, result)
    return result


@dataclass(frozen=True, kw_only=True)
class _Search:
    """What every run of one search shares: the adversary and its architecture, the validation split
    every run trains and is measured on, the hardening schedule and objective, the probe's."""

    adversary: nn.Module
    arch: str
    val: TensorData
    num_classes: int
    config: TrainConfig
    tau: float
    method: str
    key: str  # the name of the method's strength (omega, cmi_weight)
    budget: Budget
    probe_arch: str
    probe_cfg: TrainConfig
    out: Path
    device: object
    quiet: bool

    @property
    def probe_card(self) -> dict:
        return {"kind": "probe", "arch": self.probe_arch}

    def probe(self, folder: Path, *, objective=None, reference=None, card: dict, desc: str) -> dict:
        """A probe student's run on the validation split (the probe's architecture and schedule)."""
        return _run(folder, _model(self.probe_arch, self.val, self.config.seed), self.val, config=self.probe_cfg,
                    objective=objective, reference=reference, device=self.device, card={**self.probe_card, **card},
                    desc=desc, quiet=self.quiet)


def search_strength(adversary: nn.Module, *, arch: str, data: TensorData, config: TrainConfig, tau: float,
                    omega0: float, budget: Budget, students: tuple[str, ...], out, device, quiet: bool = True,
                    echo=None, method: str = "nasty") -> dict:
    """Run the search in ``out`` (a folder of its own) and return its trace (see the module doc).

    ``data`` is the full training data: the validation split is carved from it here.
    ``adversary`` is the frozen released model; ``config`` the hardening schedule; ``method`` the
    hardening objective (:data:`METHODS`), whose strength starts at ``omega0``.
    """
    key = METHODS.get(method)
    hardening_objective(method, omega0, tau=tau)  # an unknown method fails here
    budget.check()
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fit_data, val = data.split_validation(budget.validation, seed=config.seed)
    probe_cfg = TrainConfig(epochs=budget.probe_epochs or max(1, config.epochs // 2), batch_size=config.batch_size,
                            lr=config.lr, seed=config.seed)
    search = _Search(adversary=adversary, arch=arch, val=val, num_classes=data.num_classes, config=config, tau=tau,
                     method=method, key=key, budget=budget, probe_arch=budget.probe or students[0],
                     probe_cfg=probe_cfg, out=out, device=device, quiet=quiet)
    say = echo if (echo and not quiet) else (lambda *_: None)
    base = _baseline(search)
    say(f"search: plain {arch} {base['val_accuracy']:.2f}% on validation, probe {search.probe_arch} from scratch "
        f"{base['probe_scratch']:.2f}%")
    trials: list[dict] = []
    for k in range(budget.max_trials):
        omega = next_omega(trials, omega0, key=key)
        if omega is None:
            break
        row = _cached(out / f"trial-{k}.json", lambda k=k, omega=omega: _trial(search, base, k, omega))
        if (row.get(key) != omega or row.get("method", "nasty") != method
                or (budget.select == "value" and row["affordable"] and "value" not in row)):
            raise NastyError(f"{out} holds a search with other settings (trial {k}: "
                             f"{row.get('method', 'nasty')} {key} {row.get(key, float('nan')):g}, not {method} {omega:g}); "
                             f"use another output folder or start over")
        trials.append(row)
        say(_trial_line(k, row, key=key, omega=omega))
    chosen = _choose(trials, select=budget.select, key=key)
    return {"max_cost": budget.max_cost, "validation": fit_data.validation, "budget": asdict(budget),
            "probe": {"student": search.probe_arch, "epochs": probe_cfg.epochs, "alpha": budget.probe_alpha, "tau": tau},
            "baseline": base, "trials": trials, "chosen": None if chosen is None else chosen["trial"],
            key: None if chosen is None else chosen[key], "method": method, "strength_name": key,
            "strength": None if chosen is None else chosen[key],
            "seconds": round(sum(t["seconds"] for t in trials) + base["seconds"], 2),
            "wall_seconds": round(time.perf_counter() - t_start, 2)}


def _baseline(search: _Search) -> dict:
    """The plain run of the architecture and the probe from scratch (and with smoothed labels, where the
    search selects by value) on the validation split, each cached in the search's folder."""
    out, arch, val, config = search.out, search.arch, search.val, search.config

    def plain():
        card = _run(out / "plain", _model(arch, val, config.seed), val, config=config, device=search.device,
                    card={"kind": "normal", "arch": arch}, desc=f"search: plain {arch}", quiet=search.quiet)
        scratch = search.probe(out / "probe-scratch", card={}, desc=f"search: probe {search.probe_arch}")
        return {"val_accuracy": card["accuracy"], "probe_scratch": scratch["accuracy"],
                "seconds": round(card["seconds"] + scratch["seconds"], 2)}  # training time, across resumes

    base = _cached(out / "baseline.json", plain)
    if search.budget.select == "value":  # the labels-only baseline the probe family adds: label smoothing, once
        base = {**base, **_cached(out / "labels.json", lambda: {"probe_label_smoothing": search.probe(
            out / "probe-label-smoothing", objective=_smoothed, card={"label_smoothing": SMOOTHING},
            desc=f"search: probe {search.probe_arch} label smoothing")["accuracy"]})}
    return base


def _trial(search: _Search, base: dict, k: int, omega: float) -> dict:
    """Trial ``k``: harden at strength ``omega`` on the validation split; where its cost is within the
    budget, the probe's damage (and, selecting by value, what the probe family gets beyond labels)."""
    key, method, tau, budget = search.key, search.method, search.tau, search.budget
    folder = search.out / f"trial-{k}"
    model = _model(search.arch, search.val, search.config.seed)
    row = {"trial": k, key: omega, "tau": tau, **({} if method == "nasty" else {"method": method})}
    # a trial far below the plain run once the first LR drop is past has collapsed: too strong, not worth finishing
    warm = max(1, round(min(search.config.milestones) * search.config.epochs)) + 1
    try:
        card = _run(folder, model, search.val, config=search.config,
                    objective=hardening_objective(method, omega, tau=tau), reference=search.adversary, eval_tau=tau,
                    device=search.device,
                    guard=Guard(reference_accuracy=base["val_accuracy"], margin=max(20.0, 5 * budget.max_cost),
                                start=warm, chance=100.0 / search.num_classes, early_start=warm, hint="too strong"),
                    card={"kind": "nasty", "arch": search.arch, key: omega, "tau": tau,
                          **({} if method == "nasty" else {"method": method})},
                    desc=f"search: trial {k} {key} {omega:g}", quiet=search.quiet)
    except TrainingStopped as e:
        done = ckpt.read_card(folder) if (folder / ckpt.CARD).exists() else {}
        return {**row, "val_accuracy": None, "val_cost": None, "affordable": False, "collapsed": str(e),
                "seconds": done.get("seconds", 0.0)}
    cost = base["val_accuracy"] - card["accuracy"]
    row.update(val_accuracy=card["accuracy"], val_cost=round(cost, 4), kl=card.get("kl_to_adversary"),
               affordable=cost <= budget.max_cost + 1e-9)
    if row["affordable"]:  # damage is only worth measuring for a strength the user can afford
        probe = search.probe(folder / "probe", objective=objective_for("kd", alpha=budget.probe_alpha, tau=tau),
                             reference=model, card={f"teacher_{key}": omega}, desc=f"search: probe from trial {k}")
        row.update(probe_accuracy=probe["accuracy"], damage=round(base["probe_scratch"] - probe["accuracy"], 4))
        if budget.select == "value":
            more = {name: search.probe(folder / f"probe-{name}", objective=objective, reference=model,
                                       card={f"teacher_{key}": omega, "probe": name},
                                       desc=f"search: probe {name} from trial {k}")
                    for name, objective in (("kd-tau1", objective_for("kd", alpha=budget.probe_alpha, tau=1.0)),
                                            ("top1-thief", _top1_thief))}
            row.update(_beyond_labels(base, {f"kd-tau{tau:g}": probe["accuracy"], "kd-tau1": more["kd-tau1"]["accuracy"]},
                                      more["top1-thief"]["accuracy"]))
            probe = {"seconds": probe["seconds"] + sum(c["seconds"] for c in more.values())}
    row["seconds"] = round(card["seconds"] + (probe["seconds"] if row["affordable"] else 0.0), 2)
    return row


def _trial_line(k: int, row: dict, *, key: str, omega: float) -> str:
    return f"search: trial {k} {key} {omega:g}: " + (
        "collapsed" if row.get("collapsed") else
        f"validation cost {row['val_cost']:+.2f} points" + (
            f", probe {row['damage']:+.2f} points below scratch" if "damage" in row else " (over budget)")
        + (f", outputs add {row['value']:+.2f} points to labels" if "value" in row else ""))


def _choose(trials: list[dict], *, select: str, key: str) -> dict | None:
    """The affordable trial the search keeps: by value, the least a thief's best response gets beyond
    labels; by damage, the most damage; the stronger on a tie. ``None`` if none was affordable."""
    affordable = [t for t in trials if t["affordable"]]
    if not affordable:
        return None
    if select == "value":
        return max(affordable, key=lambda t: (-t["value"], t[key]))
    return max(affordable, key=lambda t: (t["damage"], t[key]))
