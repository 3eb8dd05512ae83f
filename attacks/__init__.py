"""Attacks that measure KD-immunity, and the audit that runs them.

    from attacks import create_attack, ATTACKS
    from attacks.audit import audit
    report = audit(teacher="runs/nasty", reference="runs/normal", out="runs/audit")

Each attack is one file here, registered by name with :func:`attacks.base.register`.
"""

from .base import ATTACKS, Attack, StudentBank, register, run_students
from .baselines import LabelSmoothing, Scratch

from . import kd, hard_label, dafl, deepinversion, skeptical, kd_sweep, kd_topk, recalibrate  # noqa: E402,F401,I001  (registers them, in this order)
from .dafl import DAFL
from .deepinversion import DeepInversion
from .hard_label import HardLabel
from .kd import KD
from .kd_sweep import HardLabelSweep, KDSweep
from .kd_topk import KDTopK
from .recalibrate import Recalibrate
from .skeptical import Skeptical

# the attacks an audit runs unless told otherwise (and the demo runs); `--attacks all` runs every one
# the thieves who pick their own temperature decide the worst case on digits (docs/results-digits.md): a default audit
# runs both, on the soft outputs (kd-sweep) and on the top-1 answers alone (hard-label-sweep)
DEFAULT_ATTACKS = ("kd", "hard-label", "kd-sweep", "hard-label-sweep", "dafl", "deepinversion")


def attack_settings(name: str, *, option: str = "`attacks`") -> list[str]:
    """The keyword arguments attack ``name`` accepts (its settings); ``option`` names where an
    unknown name came from in the error."""
    import inspect

    from nasty.errors import NastyError

    if name not in ATTACKS:
        raise NastyError(f"{option}: unknown attack {name!r}; choose from {', '.join(ATTACKS)} (or all)")
    return [p.name for p in inspect.signature(ATTACKS[name].__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # hard-label: none


def attack_names(names) -> list[str]:
    """``names`` with ``all`` expanded to every registered attack, each once, unknown names refused."""
    out = []
    for name in names:
        for n in (ATTACKS if name == "all" else [name]):
            attack_settings(n)
            out.append(n)
    return list(dict.fromkeys(out))


def create_attack(name: str, **kwargs) -> Attack:
    """An attack by name; ``kwargs`` the attack accepts are checked against its schema
    (:mod:`attacks.options`) and passed, others ignored (``alpha`` for DAFL)."""
    from .options import check_options

    accepted = attack_settings(name)
    return ATTACKS[name](**check_options(name, {k: v for k, v in kwargs.items() if k in accepted}))


IMAGE_TITLES = {"dafl": "DAFL generator", "deepinversion": "DeepInversion"}


def synthesized_grids(models: dict, data, *, tau: float, count: int, seed: int = 0) -> dict:
    """What ``nasty plot images`` shows: per teacher, ``count`` images that DAFL (300 generator steps)
    and DeepInversion make from it, on the teacher's device. An audit shows its own instead."""
    grids = {}
    for name, model in models.items():
        grids[f"{IMAGE_TITLES['dafl']}, from the {name} teacher"] = DAFL(tau=tau).sample(model, data, count=count,
                                                                                          seed=seed)
        grids[f"{IMAGE_TITLES['deepinversion']}, from the {name} teacher"] = DeepInversion(tau=tau).sample(
            model, data, count=count, seed=seed)
    return grids


__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "Attack", "LabelSmoothing", "Scratch", "StudentBank", "attack_names",
           "attack_settings", "create_attack", "register", "run_students", "synthesized_grids", "IMAGE_TITLES",
           "KD", "HardLabel", "DAFL", "DeepInversion", "Skeptical", "KDSweep", "HardLabelSweep", "KDTopK",
           "Recalibrate"]
