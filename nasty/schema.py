"""The schema of every file a run, an audit or a sweep holds, checked before anything is built
from it (pydantic). A file that does not fit is one line naming the file and the field.

    card = validate(Card, obj, "runs/x/card.json")      # the dict itself, checked

Unknown fields are allowed (later versions add some); known ones must have their type and range.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CheckpointError
from .safety import limit, one_line

ARCH = r"^(tv:|timm:)?[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"  # no globs, spaces, markup or control characters
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
SHA256 = r"^[0-9a-f]{64}$"

Finite = Annotated[float, Field(allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=NAME)]
Text = Annotated[str, Field(max_length=200)]
MeanStd = Annotated[list[Finite], Field(min_length=2, max_length=2)]  # [mean, std]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Normalization(_Strict):
    mean: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(min_length=1, max_length=64)
    std: list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = Field(min_length=1, max_length=64)


class Input(_Strict):
    """What a model brought from elsewhere expects of its images (``TensorData.adapted``)."""

    size: Optional[Annotated[int, Field(ge=8, le=1024)]] = None
    channels: Optional[Literal[1, 3]] = None
    channel_order: Optional[Literal["rgb", "bgr"]] = None


class ModelCardFile(BaseModel):
    """A model card the user writes once (JSON or TOML): what every command would otherwise be told
    with options. Unknown keys are refused (a typo would silently change nothing)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    arch: Optional[Annotated[str, Field(pattern=ARCH)]] = None
    dataset: Optional[Name] = None
    mean: Optional[Finite | Annotated[list[Finite], Field(min_length=1, max_length=64)]] = None
    std: Optional[Finite | Annotated[list[Finite], Field(min_length=1, max_length=64)]] = None
    normalization: Optional[Literal["imagenet", "unit"]] = None
    classes: Optional[Annotated[list[Text], Field(min_length=1, max_length=100_000)]] = None
    expect_accuracy: Optional[Percent] = None
    input_size: Optional[Annotated[int, Field(ge=8, le=1024)]] = None
    channels: Optional[Literal[1, 3]] = None
    channel_order: Optional[Literal["rgb", "bgr"]] = None


class Adversary(_Strict):
    source: Optional[Text] = None
    arch: Optional[Annotated[str, Field(pattern=ARCH)]] = None
    accuracy: Optional[Percent] = None
    sha256: Optional[Annotated[str, Field(pattern=SHA256)]] = None


class Card(_Strict):
    """``card.json`` (and what a ``.safetensors`` file's metadata says)."""

    nasty_version: Optional[Text] = None
    kind: Optional[Name] = None
    arch: Optional[Annotated[str, Field(pattern=ARCH)]] = None
    dataset: Optional[Name] = None
    num_classes: Optional[Annotated[int, Field(ge=1)]] = None
    classes: Optional[list[Text]] = None
    input_shape: Optional[Annotated[list[Annotated[int, Field(ge=1, le=8192)]], Field(min_length=3, max_length=3)]] = None
    normalization: Optional[Normalization] = None
    input: Optional[Input] = None
    omega: Optional[Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]] = None
    tau: Optional[Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] = None
    method: Optional[Literal["nasty", "cmim"]] = None  # the hardening objective (absent: nasty)
    cmi_weight: Optional[Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]] = None
    init: Optional[Name] = None
    adversary: Optional[Adversary] = None
    accuracy: Optional[Percent] = None
    teacher_cost: Optional[Finite] = None
    kl_to_adversary: Optional[Finite] = None
    epoch: Optional[Annotated[int, Field(ge=0)]] = None
    epochs: Optional[Annotated[int, Field(ge=1)]] = None
    batch_size: Optional[Annotated[int, Field(ge=1)]] = None
    lr: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    seed: Optional[int] = None
    seconds: Optional[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = None
    flip: Optional[bool] = None  # random horizontal flips in training (absent: the dataset's choice)
    train_fraction: Optional[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = None
    train_size: Optional[Annotated[int, Field(ge=0)]] = None
    test_size: Optional[Annotated[int, Field(ge=0)]] = None
    device: Optional[Name] = None
    status: Optional[Name] = None
    sha256: Optional[Annotated[str, Field(pattern=SHA256)]] = None

    @field_validator("num_classes")
    @classmethod
    def _classes_limit(cls, v):
        if v is not None and v > limit("CLASSES"):
            raise ValueError(f"{v:,} classes is more than the limit of {limit('CLASSES'):,} "
                             f"(set NASTY_MAX_CLASSES to raise it)")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.classes is not None and self.num_classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"classes lists {len(self.classes)} names but num_classes is {self.num_classes}")
        if self.input_shape and self.input_shape[0] > 64:
            raise ValueError(f"input_shape: {self.input_shape[0]} channels (at most 64)")
        if self.normalization and self.input_shape and len(self.normalization.mean) != self.input_shape[0]:
            raise ValueError("normalization does not have one mean per input channel")
        return self


class MetricsRow(BaseModel):
    """One line of ``metrics.jsonl``: the epoch and numbers."""

    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, Optional[Finite]]
    epoch: Annotated[int, Field(ge=1)]


class TrainState(BaseModel):
    """``train_state.pt`` (after a ``weights_only`` load): its structure; the trainer checks the
    state dicts against the model and optimizer they are loaded into."""

    model_config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)
    model: dict[str, object]
    optimizer: dict[str, object]
    scheduler: dict[str, object]
    epoch: Annotated[int, Field(ge=0)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    last: Optional[dict[str, object]] = None
    config: dict[str, dict[str, object]]

    @field_validator("model")
    @classmethod
    def _tensors(cls, v):
        import torch

        bad = next((k for k, t in v.items() if not torch.is_tensor(t)), None)
        if bad is not None:
            raise ValueError(f"entry {one_line(bad)[:60]!r} is not a tensor")
        return v


class Run(_Strict):
    attack: Name
    student: Annotated[str, Field(pattern=ARCH)]
    source: Literal["scratch", "label-smoothing", "normal", "nasty"]  # the baselines, then the two teachers
    seed: int
    accuracy: Percent


class AuditCell(_Strict):
    """``cells/<attack>-seed<n>.json``."""

    key: dict
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    runs: list[Run] = Field(max_length=10_000)
    resumed_from_epoch: Optional[Annotated[int, Field(ge=0)]] = None


# ``report.json`` of an audit. Its keys name the two sides as the first audits did: ``normal`` is the
# *reference* (the model as released, the adversary a nasty teacher was hardened against) and ``nasty``
# the *teacher* audited (a nasty teacher or any defended model). The models below name them reference
# and teacher, with the JSON keys as aliases (``by_alias`` to write them); readers of old reports
# keep working. Unknown fields are kept; fields added by later versions default when missing.

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Utility(_Lenient):
    """What an honest user gets from a teacher's served probabilities on the test set."""

    nll: Optional[Finite] = None
    ece: Optional[Finite] = None
    top5: Optional[Finite] = None


class ReportTeacher(_Lenient):
    """One side of the audit: its architecture, test accuracy (%) as served, and defence."""

    arch: Optional[str] = None
    accuracy: Optional[Finite] = None
    defence: Optional[str] = None
    omega: Optional[Finite] = None  # the audited teacher's hardening (the reference has none)
    tau: Optional[Finite] = None
    sha256: Optional[str] = None
    utility: Optional[Utility] = None  # audits before the served utility have none


class ReportTeachers(_Lenient):
    reference: Optional[ReportTeacher] = Field(None, alias="normal")
    teacher: Optional[ReportTeacher] = Field(None, alias="nasty")


class MeanStdField(_Lenient):
    mean: Finite
    std: Finite


class SummaryRow(_Lenient):
    """Per attack and student: accuracies over seeds; the margins of the teacher's students."""

    attack: str
    student: str
    seeds: Optional[int] = None
    acc_scratch: MeanStdField
    acc_label_smoothing: Optional[MeanStdField] = None  # audits before the label-smoothing baseline: none
    acc_from_reference: MeanStdField = Field(alias="acc_from_normal")
    acc_from_teacher: MeanStdField = Field(alias="acc_from_nasty")
    immunity: Finite  # from reference - from teacher
    immunity_std: Optional[Finite] = None
    below_scratch: Finite  # scratch - from teacher
    below_label_smoothing: Optional[Finite] = None


class WorstCase(_Lenient):
    """Per student, the attack that gets most from the teacher."""

    student: str
    attack: str
    acc_from_teacher: MeanStdField = Field(alias="acc_from_nasty")
    immunity: Finite
    immunity_std: Optional[Finite] = None
    below_scratch: Finite
    below_label_smoothing: Optional[Finite] = None


class Best(_Lenient):
    attack: str
    accuracy: Finite


class BeyondSide(_Lenient):
    outputs: Best  # the strongest thief that reads the side's outputs
    labels: Best  # the best student from labels alone
    adds: Finite


class BeyondLabels(_Lenient):
    student: str
    teacher: BeyondSide
    reference: BeyondSide


class ReportSettings(_Lenient):
    students: list[str] = []
    epochs: Optional[int] = None
    steps: Optional[int] = None  # audits before the step budget recorded epochs alone
    student_epochs: Optional[int] = None
    samples: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[Finite] = None
    alpha: Optional[Finite] = None
    tau: Optional[Finite] = None
    attacks: dict[str, dict] = {}


class CellCount(_Lenient):
    done: int
    total: int
    failed: int = 0


class FailedCell(_Lenient):
    cell: str
    error: str


class AuditReport(_Lenient):
    """``report.json``: what :func:`attacks.audit.audit` writes and its readers read (the same dict
    that it returns). The four sections every audit has ever written are required; the rest defaults."""

    nasty_version: Optional[str] = None
    dataset: Optional[str] = None
    train_fraction: Optional[Finite] = None
    teachers: ReportTeachers
    teacher_cost: Optional[Finite] = None  # reference accuracy - teacher accuracy
    settings: ReportSettings
    seconds: Optional[Finite] = None
    runs: list[Run]
    summary: list[SummaryRow]
    worst_case: list[WorstCase] = []
    beyond_labels: list[BeyondLabels] = []
    notes: dict[str, dict] = {}
    cells: Optional[CellCount] = None  # audits before partial reports: none
    failed: list[FailedCell] = []


class PartialCell(BaseModel):
    """``cells/<cell>.partial.pt``: the state of a cell in training."""

    model_config = ConfigDict(strict=True, extra="allow")
    key: dict
    epoch: Annotated[int, Field(ge=0)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class SweepRow(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, object]
    omega: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    tau: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    epochs: Annotated[int, Field(ge=1)]
    nasty_accuracy: MeanStd

    @model_validator(mode="after")
    def _students(self):
        import re

        for k, v in (self.__pydantic_extra__ or {}).items():
            if k.startswith("kd_"):
                if not re.match(NAME, k[3:]):
                    raise ValueError(f"{one_line(k)[:60]!r} is not kd_<student name>")
                MeanStdCheck.model_validate({"v": v}, strict=True)
        return self


class MeanStdCheck(BaseModel):
    v: MeanStd


class Sweep(BaseModel):
    """The JSON of ``bench/omega_sweep.py --json``."""

    model_config = ConfigDict(strict=True, extra="allow")
    summary: list[SweepRow] = Field(min_length=1, max_length=10_000)
    baseline: dict[Name, dict[Name, MeanStd]] = {}
    dataset: Optional[Name] = None
    arch: Optional[Annotated[str, Field(pattern=ARCH)]] = None
    seeds: Optional[list[int] | int] = None

    @model_validator(mode="after")
    def _same_students(self):
        first = {k for k in (self.summary[0].__pydantic_extra__ or {}) if k.startswith("kd_")}
        for row in self.summary:
            if {k for k in (row.__pydantic_extra__ or {}) if k.startswith("kd_")} != first:
                raise ValueError("every summary row must have the same kd_<student> columns")
        return self


def validate(schema: type[BaseModel], obj, where, *, error=CheckpointError, strict: bool = True):
    """``obj`` checked against ``schema``; returns ``obj`` itself. A misfit raises ``error``
    with one line: the file, the first field that does not fit, and why."""
    if not isinstance(obj, dict):
        raise error(f"{one_line(where)}: expected a JSON object, found {type(obj).__name__}")
    try:
        schema.model_validate(obj, strict=strict)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        first = errs[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        got = "" if first["type"] in ("missing", "value_error") or isinstance(first.get("input"), (dict, list)) \
            else f" (got {one_line(repr(first.get('input')))[:60]})"
        more = f"; {len(errs) - 1} more" if len(errs) > 1 else ""
        raise error(f"{one_line(where)}: field {one_line(field)[:80]}: {one_line(msg)[:160]}{got}{more}") from None
    return obj
