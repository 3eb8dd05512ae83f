"""The two objectives of the paper, in its notation.

    p_tau(z) = softmax(z / tau)

    KD (Hinton), student S learning from teacher T:
        alpha * tau^2 * KL(p_tau(z_T) || p_tau(z_S)) + (1 - alpha) * CE(z_S, y)

    Self-undermining (Ma et al., ICLR 2021), nasty teacher T, frozen adversary A:
        CE(z_T, y) - omega * tau^2 * KL(p_tau(z_T) || p_tau(z_A))

KL is averaged over the batch. Gradients flow only through the model being trained:
the teacher (in KD) and the adversary (in self-undermining) are detached here.
Each function returns ``(loss, terms)`` where ``terms`` holds the named parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kl_tau", "kd_loss", "self_undermining_loss", "cross_entropy"]


def kl_tau(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(p_tau(p_logits) || p_tau(q_logits)), summed over classes, mean over the batch."""
    log_p = F.log_softmax(p_logits.float() / tau, dim=-1)
    log_q = F.log_softmax(q_logits.float() / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor):
    """Plain supervised training (a normal teacher, or a student from scratch)."""
    ce = F.cross_entropy(logits.float(), labels)
    return ce, {"ce": ce.detach()}


def kd_loss(student_logits, teacher_logits, labels, *, alpha: float, tau: float):
    """Hinton KD: alpha * tau^2 * KL(p_T || p_S) + (1 - alpha) * CE(z_S, y)."""
    kl = kl_tau(teacher_logits.detach(), student_logits, tau)
    ce = F.cross_entropy(student_logits.float(), labels)
    loss = alpha * tau**2 * kl + (1.0 - alpha) * ce
    return loss, {"ce": ce.detach(), "kl": kl.detach()}


def self_undermining_loss(nasty_logits, adversary_logits, labels, *, omega: float, tau: float):
    """Nasty teacher: CE(z_T, y) - omega * tau^2 * KL(p_T || p_A), adversary frozen."""
    kl = kl_tau(nasty_logits, adversary_logits.detach(), tau)
    ce = F.cross_entropy(nasty_logits.float(), labels)
    loss = ce - omega * tau**2 * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}
