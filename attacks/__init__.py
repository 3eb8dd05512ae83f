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


def create_attack(name: str, **kwargs) -> Attack:
    """An attack by name; ``kwargs`` the attack accepts are passed, others ignored (``alpha`` for DAFL)."""
    import inspect

    from nasty.errors import NastyError

    if name not in ATTACKS:
        raise NastyError(f"--attacks: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    cls = ATTACKS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


__all__ = ["ATTACKS", "Attack", "Scratch", "StudentBank", "create_attack", "run_students",
           "KD", "HardLabel", "DAFL", "DeepInversion"]
