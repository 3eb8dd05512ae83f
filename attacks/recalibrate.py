"""A breaker of hardened teachers: recalibrate the teacher's answers on the thief's own labelled
images, then distil the recalibrated answers.

Why: a hardened teacher keeps its top-1 answer right but bends the rest of its outputs (the nasty
teacher moves mass onto wrong classes, CMIM collapses each class onto one answer; serving-time
defences rescale or cut the logits). A thief that holds labelled images can measure that bend
and read the answers through its inverse before distilling. It holds out ``val_fraction`` of its
own training images (stratified, seeded by the cell's seed; never the test set), asks the teacher
about them, and fits a map ``g`` from the teacher's logits to new logits by minimising the
cross-entropy of ``softmax(g(z_T))`` against the true labels:

    vector (default):  g(z) = a * z + b       per-class scale a and bias b (2C numbers)
    matrix (matrix=1): g(z) = W z + b         full C x C matrix, with l2 * (sum of W's off-diagonal
                                              entries squared) added, as Kull et al.'s ODIR (NeurIPS 2019)

starting from g = identity, by L-BFGS in float64 on the CPU (``steps`` iterations): the same
seed gives the same map. The student then learns, on all the thief's images,

    alpha * tau^2 * KL(p_tau(g(z_T)) || p_tau(z_S)) + (1 - alpha) * CE(z_S, y).

The report's notes give, per teacher, the held-out NLL of the teacher's answers before and after
the map (how much the thief could read back).

Provenance: this is our own design, aimed at the hardened teacher's known weakness (its argmax is
kept; its soft outputs carry a systematic distortion that labelled data can measure). It is *not*
Jandial et al.'s HTC or SCM ("Distilling the Undistillable: Learning from a Nasty Teacher",
ECCV 2022): we could not find their equations in the sources available to us (only the names:
a high-temperature composition of the teacher's outputs, and a sequence of contrastive models),
so we implemented neither. Calibration by a per-class affine map of the logits is vector scaling,
and by a full matrix matrix scaling, as in Guo et al. (ICML 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nasty.errors import NastyError
from nasty.objectives import kd_loss
from nasty.trainer import frozen_logits

from .base import Attack, register


def fit_recalibration(logits: torch.Tensor, labels: torch.Tensor, *, matrix: bool = False, l2: float = 0.01,
                      steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` (float32, on the CPU) of the map ``z -> z @ W.T + b`` that minimises the NLL of
    ``labels`` (plus ``l2`` times the squared off-diagonal entries of a full matrix); ``W`` is
    diagonal unless ``matrix``."""
    z = torch.nan_to_num(logits.detach().double().cpu(), nan=0.0, posinf=1e4, neginf=-1e4)
    y = labels.detach().cpu()
    c = z.shape[1]
    eye = torch.eye(c, dtype=torch.float64)
    w = (eye.clone() if matrix else torch.ones(c, dtype=torch.float64)).requires_grad_(True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        mapped = z @ w.t() + b if matrix else z * w + b
        loss = F.cross_entropy(mapped, y) + (l2 * ((w * (1 - eye)) ** 2).sum() if matrix else 0.0)
        loss.backward()
        return loss

    opt.step(closure)
    weight = w.detach() if matrix else torch.diag(w.detach())
    if not (torch.isfinite(weight).all() and torch.isfinite(b).all()):  # a failed fit: read the answers as they are
        return torch.eye(c), torch.zeros(c)
    return weight.float(), b.detach().float()


def nll_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean NLL of ``labels`` under ``softmax(logits)`` (log-softmax: finite for cut-off classes)."""
    z = torch.nan_to_num(logits.detach().double(), nan=0.0, posinf=1e4, neginf=-1e4)
    return float(F.cross_entropy(z, labels))


@register
class Recalibrate(Attack):
    name = "recalibrate"

    def __init__(self, *, alpha: float = 0.9, tau: float = 4.0, val_fraction: float = 0.2, matrix: bool = False,
                 l2: float = 0.01, steps: int = 100):
        for key, v in (("alpha", alpha), ("tau", tau), ("val_fraction", val_fraction), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise NastyError(f"recalibrate.{key} must be a finite number, got {v!r}")
        if not 0.0 <= alpha <= 1.0:
            raise NastyError(f"recalibrate.alpha must be in [0, 1], got {alpha}")
        if not tau > 0:
            raise NastyError(f"recalibrate.tau must be > 0, got {tau}")
        if not 0.0 < val_fraction < 1.0:
            raise NastyError(f"recalibrate.val_fraction must be in (0, 1), got {val_fraction}")
        if matrix not in (0, 1):  # True, False, or 1 and 0 from --attack-option
            raise NastyError(f"recalibrate.matrix must be 1 or 0 (a full matrix, or per-class scale and bias), "
                             f"got {matrix!r}")
        if l2 < 0:
            raise NastyError(f"recalibrate.l2 must be >= 0, got {l2}")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise NastyError(f"recalibrate.steps must be a whole number >= 1, got {steps!r}")
        self.alpha, self.tau, self.val_fraction = float(alpha), float(tau), float(val_fraction)
        self.matrix, self.l2, self.steps = bool(matrix), float(l2), int(steps)

    def check_data(self, data):
        try:  # the thief's share must hold every class in its held-out part
            data.split_validation(self.val_fraction, seed=0)
        except NastyError as e:
            raise NastyError(f"recalibrate: {e}") from None

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        if teacher is None:
            return None
        held = data.split_validation(self.val_fraction, seed=seed % 2**32)[1]  # the thief's own held-out images
        zs, ys = [], []
        for x, y in held.batches("test", batch_size=1000, device=device):
            zs.append(frozen_logits(teacher, x, torch.device(device)).cpu())
            ys.append(y.cpu())
        z, y = torch.cat(zs), torch.cat(ys)
        weight, bias = fit_recalibration(z, y, matrix=self.matrix, l2=self.l2, steps=self.steps)
        return {"weight": weight.to(device), "bias": bias.to(device), "held_out": len(y),
                "nll_before": round(nll_of(z, y), 4), "nll_after": round(nll_of(z @ weight.t() + bias, y), 4)}

    def recalibrated(self, ctx, teacher_logits: torch.Tensor) -> torch.Tensor:
        return teacher_logits.float() @ ctx["weight"].t() + ctx["bias"]

    def losses(self, ctx, student_logits, teacher_logits, y, *, epoch, arch):
        return {"loss": kd_loss(student_logits, self.recalibrated(ctx, teacher_logits), y, alpha=self.alpha,
                                tau=self.tau)[0]}

    def notes(self, ctx) -> dict:
        if ctx is None:
            return {}
        return {k: ctx[k] for k in ("held_out", "nll_before", "nll_after")}
