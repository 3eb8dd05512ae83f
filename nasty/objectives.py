"""The objectives of the toolkit, in their papers' notation.

    p_tau(z) = softmax(z / tau)

    KD (Hinton), student S learning from teacher T:
        alpha * tau^2 * KL(p_tau(z_T) || p_tau(z_S)) + (1 - alpha) * CE(z_S, y)

    Self-undermining (Ma et al., ICLR 2021), nasty teacher T, frozen adversary A:
        CE(z_T, y) - omega * tau^2 * KL(p_tau(z_T) || p_tau(z_A))

    CMIM (Ye, Hamidi, Yang 2025, arXiv 2507.00012), the teacher alone, no adversary:
        CE(z, y) + lambda * mean_{tau in taus} CMI_tau
        CMI_tau = (1/n) sum_i KL(p_tau(z_i) || q_tau^{y_i}),  q_tau^c = mean of p_tau(z_j) over the y_j = c

KL is averaged over the batch. Gradients flow only through the model being trained:
the teacher (in KD) and the adversary (in self-undermining) are detached here.
Each function returns ``(loss, terms)`` where ``terms`` holds the named parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kl_tau", "kd_loss", "self_undermining_loss", "cross_entropy", "conditional_mi", "cmim_loss", "CMIM_TAUS"]


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


CMIM_TAUS = (1.0, 2.0, 4.0, 8.0, 16.0)  # the temperatures CMIM's term is averaged over (ours: see cmim_loss)


def conditional_mi(logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """The empirical conditional mutual information I(X; P_tau | Y) of a batch's softened outputs:
    ``(1/n) sum_i KL(p_tau(z_i) || q^{y_i})`` with ``q^c`` the mean of ``p_tau`` over the batch's
    samples of class ``c`` (its centroid). Zero when every class's outputs coincide; a class seen
    once adds zero. The centroid stays in the graph; its gradient vanishes (the mean minimises the
    summed KL to it on the simplex), so this equals the alternating form with the centroid fixed."""
    log_p = F.log_softmax(logits.float() / tau, dim=-1)
    p = log_p.exp()
    onehot = F.one_hot(labels, logits.shape[-1]).to(p.dtype)  # (n, C): sample -> its class
    counts = onehot.sum(0).clamp_min(1.0)
    centroids = (onehot.t() @ p) / counts[:, None]  # (C classes, C outputs); unseen classes: zero rows, never read
    log_q = centroids[labels].clamp_min(1e-30).log()
    return (p * (log_p - log_q)).sum(dim=-1).mean()


def cmim_loss(logits, labels, *, weight: float, taus=CMIM_TAUS):
    """CMIM (Ye, Hamidi, Yang 2025, arXiv 2507.00012): ``CE(z, y) + weight * mean_tau CMI_tau``.

    What the paper says, as far as we could read it (its abstract, arXiv 2507.00012 v1, 13 Jun
    2025; the method section and its equation numbers were not available to us): a model is
    *undistillable* when no KD student beats a label-smoothing student; an undistillable model's
    per-class clusters of output distributions should collapse, ideally into one distribution per
    label; the concentration of each cluster is measured by conditional mutual information (CMI);
    CMIM trains by jointly minimising CE and the CMI of *all temperature-scaled clusters across the
    whole temperature spectrum*. The CMI of a classifier's outputs given the label is the one of
    Yang et al.'s earlier CMI work (I(X; P | Y) = E_y E_{x|y} KL(P_x || centroid of class y)).

    What is ours, not confirmed from the paper: the empirical estimate on each batch (centroids
    from the batch, not from running or whole-dataset averages, and no alternating update); the
    temperature spectrum as the plain mean over a finite ladder ``taus`` (default 1, 2, 4, 8, 16)
    rather than an integral or the paper's own weighting; one weight ``weight`` (lambda) on the
    term, with no schedule. Minimising it pulls every sample's softened outputs onto its class
    centroid, so a served answer carries no per-sample dark knowledge beyond its class.
    """
    taus = tuple(float(t) for t in taus)
    cmi = torch.stack([conditional_mi(logits, labels, t) for t in taus]).mean()
    ce = F.cross_entropy(logits.float(), labels)
    loss = ce + weight * cmi
    return loss, {"ce": ce.detach(), "cmi": cmi.detach()}
