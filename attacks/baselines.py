"""The baselines every attack is compared with: students trained on the real labels, with no teacher,
plainly (:class:`Scratch`) or with smoothed labels (:class:`LabelSmoothing`)."""

from __future__ import annotations

import torch.nn.functional as F

from nasty.errors import NastyError
from nasty.objectives import cross_entropy

from .base import Attack


class Scratch(Attack):
    """The baseline: no teacher, cross-entropy on the real labels."""

    name = "scratch"
    cost = 0.35  # one student, no teacher (about a third of a KD cell of two sides, measured)
    sample_mean = True

    def loss(self, student_logits, teacher_logits, y):
        return cross_entropy(student_logits, y)


class LabelSmoothing(Attack):
    """The stricter baseline (CMIM's test of undistillability): no teacher, cross-entropy on the
    real labels smoothed by ``smoothing`` (the true class gets 1 - smoothing + smoothing / C)."""

    name = "label-smoothing"
    cost = 0.35
    sample_mean = True

    def __init__(self, *, smoothing: float = 0.1):
        if not 0.0 <= smoothing < 1.0:
            raise NastyError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def loss(self, student_logits, teacher_logits, y):
        ce = F.cross_entropy(student_logits.float(), y, label_smoothing=self.smoothing)
        return ce, {"ce": ce.detach()}
