"""Standard knowledge distillation (Hinton et al., 2015) on the attacker's real data:

    alpha * tau^2 * KL(p_tau(z_T) || p_tau(z_S)) + (1 - alpha) * CE(z_S, y)
"""

from __future__ import annotations

from nasty.objectives import kd_loss

from .base import Attack, register


@register
class KD(Attack):
    name = "kd"
    sample_mean = True

    def __init__(self, *, alpha: float = 0.9, tau: float = 4.0):
        self.alpha, self.tau = alpha, tau

    def loss(self, student_logits, teacher_logits, y):
        return kd_loss(student_logits, teacher_logits, y, alpha=self.alpha, tau=self.tau)
