"""Denoised soft labels: the thief keeps only the teacher's top-k probabilities at temperature
tau, renormalises them, and distils from that (the misleading mass a nasty teacher puts on wrong
classes sits mostly outside its top few):

    q = p_tau(z_T) restricted to its k largest entries, renormalised  (= softmax of the top-k logits / tau)
    alpha * tau^2 * KL(q || p_tau(z_S)) + (1 - alpha) * CE(z_S, y)

k = 1 is a one-hot of the teacher's answer (hard-label KD at tau); k = C is plain KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasty.errors import NastyError

from .base import Attack, register


def topk_kd_loss(student_logits, teacher_logits, labels, *, k: int, alpha: float, tau: float):
    """``(loss, terms)`` of KD from the teacher's renormalised top-k probabilities."""
    t = teacher_logits.detach().float()
    top = t.topk(k, dim=1)
    kept = torch.full_like(t, float("-inf")).scatter(1, top.indices, top.values)
    q = F.softmax(kept / tau, dim=1)  # zero outside the top k
    log_s = F.log_softmax(student_logits.float() / tau, dim=1)
    kl = (torch.xlogy(q, q) - q * log_s).sum(dim=1).mean()
    ce = F.cross_entropy(student_logits.float(), labels)
    return alpha * tau**2 * kl + (1.0 - alpha) * ce, {"ce": ce.detach(), "kl": kl.detach()}


@register
class KDTopK(Attack):
    name = "kd-topk"
    sample_mean = True

    def __init__(self, *, k: int = 2, alpha: float = 0.9, tau: float = 4.0):
        if int(k) != k or k < 1:
            raise NastyError(f"kd-topk.k must be a whole number >= 1, got {k}")
        self.k, self.alpha, self.tau = int(k), alpha, tau

    def check_data(self, data):
        if self.k > data.num_classes:
            raise NastyError(f"kd-topk.k must be at most the number of classes ({data.num_classes}), got {self.k}")

    def loss(self, student_logits, teacher_logits, y):
        return topk_kd_loss(student_logits, teacher_logits, y, k=self.k, alpha=self.alpha, tau=self.tau)
