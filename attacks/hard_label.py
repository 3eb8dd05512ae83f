"""Hard-label stealing: the thief sees only the teacher's top-1 answer (a label-only API)
and trains on it with cross-entropy, on its own unlabeled real images.

A nasty teacher keeps its top-1 accuracy, so this attack is expected to work against it:
it marks the limit of what a defence on the softened outputs can stop.
"""

from __future__ import annotations

from nasty.objectives import cross_entropy

from .base import Attack, register


@register
class HardLabel(Attack):
    name = "hard-label"
    cost = 0.85
    sample_mean = True
    labels_only = True

    def loss(self, student_logits, teacher_logits, y):
        return cross_entropy(student_logits, teacher_logits.argmax(dim=1))
