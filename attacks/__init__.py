"""Attacks that measure KD-immunity, and the audit that runs them.

    from attacks import create_attack, ATTACKS
    from attacks.audit import audit
    report = audit(teacher="runs/nasty", reference="runs/normal", out="runs/audit")
"""

from .base import Attack, Scratch, StudentBank, run_students
from .dafl import DAFL
from .deepinversion import DeepInversion
from .hard_label import HardLabel
from .kd import KD

ATTACKS: dict[str, type[Attack]] = {a.name: a for a in (KD, HardLabel, DAFL, DeepInversion)}


def attack_settings(name: str, *, option: str = "--attacks") -> list[str]:
    """The keyword arguments attack ``name`` accepts (its settings); ``option`` names where an
    unknown name came from in the error."""
    import inspect

    from nasty.errors import NastyError

    if name not in ATTACKS:
        raise NastyError(f"{option}: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    return [p for p in inspect.signature(ATTACKS[name].__init__).parameters if p != "self"]


def create_attack(name: str, **kwargs) -> Attack:
    """An attack by name; ``kwargs`` the attack accepts are passed, others ignored (``alpha`` for DAFL)."""
    accepted = attack_settings(name)
    return ATTACKS[name](**{k: v for k, v in kwargs.items() if k in accepted})


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


__all__ = ["ATTACKS", "Attack", "Scratch", "StudentBank", "attack_settings", "create_attack", "run_students",
           "synthesized_grids", "IMAGE_TITLES", "KD", "HardLabel", "DAFL", "DeepInversion"]
