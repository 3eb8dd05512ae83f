"""One schema per attack for its settings (pydantic): each setting's type and range, written once.

    check_options("kd", {"alpha": 5})   # NastyError: kd.alpha must be a number in [0, 1], got 5
    check_options("kd-sweep", {"taus": 4.0})  # {"taus": [4.0]}: one number stands for a list of one

Every value an attack is built with passes here, whatever it came from (the attack's defaults,
the dataset recipe, ``--alpha``/``--tau``, ``--attack-option``, a Python call):
:func:`attacks.create_attack` checks what it passes on, and the audit checks the user's options
before anything is loaded or trained. Whole numbers are whole (``2.0`` is 2, ``2.5``, NaN and
infinities are refused), every number is finite, and every count is bounded, so no setting can
ask for more memory or time than a machine has. An attack without a schema here (registered by
other code) is checked by its constructor alone.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from nasty.errors import NastyError
from nasty.safety import limit, one_line

__all__ = ["SCHEMAS", "check_options", "check_counts"]


def _whole(v):
    """A whole number: an int, or a float with no fractional part (``--attack-option k=2.0``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    if isinstance(v, float) and not (math.isfinite(v) and v == int(v)):
        raise ValueError("not a whole number")
    return int(v)


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("not a number")
    return float(v)


def _listed(v):
    """A list of numbers; one number stands for a list of one (``--attack-option kd-sweep.taus=4``)."""
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else list(v) if isinstance(v, tuple) else v


def _count(lo: int, hi: int):
    return Annotated[int, BeforeValidator(_whole),
                     Field(ge=lo, le=hi, description=f"a whole number from {lo} to {hi:,}")]


def _real(description: str, **bounds):
    return Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False, description=description, **bounds)]


Unit = _real("a number in [0, 1]", ge=0, le=1)
OpenUnit = _real("a number in (0, 1)", gt=0, lt=1)
Positive = _real("a finite number > 0 (at most 1e6)", gt=0, le=1e6)
Weight = _real("a finite number >= 0 (at most 1e6)", ge=0, le=1e6)
Rate = _real("a finite learning rate > 0 (at most 10)", gt=0, le=10)
Flag = Annotated[Literal[0, 1], BeforeValidator(lambda v: int(v) if isinstance(v, bool) else _whole(v)),
                 Field(description="1 or 0 (true or false)")]
Index = Annotated[int, BeforeValidator(_whole), Field(ge=-64, le=63, description="a whole number from -64 to 63")]
Taus = Annotated[list[Positive], BeforeValidator(_listed),
                 Field(min_length=1, max_length=32, description="a list of 1 to 32 finite numbers > 0")]
Alphas = Annotated[list[Unit], BeforeValidator(_listed),
                   Field(min_length=1, max_length=32, description="a list of 1 to 32 numbers in [0, 1]")]
Epochs = _count(0, 100_000)
Steps = _count(0, 10_000_000)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KDOptions(_Options):
    alpha: Unit = 0.9
    tau: Positive = 4.0


class DAFLOptions(_Options):
    tau: Positive = 4.0
    one_hot: Weight = 1.0
    activation: Weight = 0.1
    entropy: Weight = 5.0
    latent: _count(1, 4096) = 100
    lr_g: Rate = 1e-3


class DeepInversionOptions(_Options):
    tau: Positive = 4.0
    pool_size: _count(1, 1_000_000) = 512
    iterations: _count(1, 100_000) = 200
    lr: Rate = 0.1
    bn: Weight = 1.0
    tv: Weight = 1e-3
    l2: Weight = 1e-5
    jitter: _count(0, 64) = 1
    competition: Weight = 0.0
    rounds: _count(1, 10_000) = 1


class SkepticalOptions(_Options):
    alpha: Unit = 0.9
    tau: Positive = 4.0
    delay: Epochs = 2
    shallow: Index = 0
    middle: Index = -1
    middle_kl: Unit = 0.3


class SweepOptions(_Options):
    taus: Taus = [1.0, 2.0, 4.0, 8.0, 16.0]
    alphas: Alphas = [0.5, 0.9]
    val_fraction: OpenUnit = 0.2
    search_epochs: _count(1, 100_000) = 5
    search_steps: Steps = 80
    val_images: Steps = 200
    match_steps: Flag = 1


class TopKOptions(KDOptions):
    k: _count(1, 100_000) = 2


class RecalibrateOptions(KDOptions):
    val_fraction: OpenUnit = 0.2
    matrix: Flag = 0
    l2: Weight = 0.01
    steps: _count(1, 100_000) = 100


class NoOptions(_Options):
    pass


SCHEMAS: dict[str, type[_Options]] = {
    "kd": KDOptions, "hard-label": NoOptions, "dafl": DAFLOptions, "deepinversion": DeepInversionOptions,
    "skeptical": SkepticalOptions, "kd-sweep": SweepOptions, "hard-label-sweep": SweepOptions, "kd-topk": TopKOptions,
    "recalibrate": RecalibrateOptions,
}


def check_options(name: str, options: dict, *, option: str = "") -> dict:
    """``options`` of attack ``name`` checked against its schema; returns them as the attack takes
    them (whole numbers as int, a number for a list as a list of one). The first that does not fit
    is one line: ``{option} {name}.{key} must be {what}, got {value}``."""
    schema = SCHEMAS.get(name)
    if schema is None:
        return dict(options)
    try:
        checked = schema.model_validate(options)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        field = schema.model_fields.get(key)
        if field is None:
            raise NastyError(f"{option + ' ' if option else ''}{name} has no setting {one_line(key)[:40]!r}; it has "
                             f"{', '.join(schema.model_fields) or 'none'}") from None
        what = field.description or first["msg"]
        raise NastyError(f"{option + ' ' if option else ''}{name}.{key} must be {what}, "
                         f"got {one_line(repr(options.get(key)))[:60]}") from None
    return {k: getattr(checked, k) for k in options}


# counts the command line or a Python call may ask for: NASTY_MAX_<NAME> raises one
COUNTS = {"seeds": "SEEDS", "students": "STUDENTS", "epochs": "EPOCHS"}


def check_counts(**counts) -> None:
    """Each count (``seeds=3``, ``epochs=10**9``) within its limit (:data:`nasty.safety.LIMITS`), checked
    before anything is allocated for it; ``None`` is not checked."""
    for what, n in counts.items():
        if n is None:
            continue
        name = COUNTS[what]
        if n > limit(name):
            raise NastyError(f"`{what}`: {n:,} is more than the limit of {limit(name):,} "
                             f"(set NASTY_MAX_{name} to raise it)")
