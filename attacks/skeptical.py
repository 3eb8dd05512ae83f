"""The skeptical student (Kundu et al., NeurIPS 2021, "Analyzing the Confidentiality of
Undistillable Teachers in Knowledge Distillation"): distil the teacher into a *shallow* part of
the student only, and let the rest learn from the labels and from itself.

The student gains two auxiliary heads on intermediate depths (its model's named ``taps``; a head
is one conv-BN-ReLU, or linear-ReLU, to the model's feature width, global pooling and a linear
layer). Its plain forward, the final head, is what is evaluated. Per batch, once ``delay``
epochs have passed:

    KD at the shallow head:  alpha * tau^2 * KL(p_tau(z_T) || p_tau(z_shallow)) + (1 - alpha) * CE(z_shallow, y)
    the middle head:         middle_kl * KL(p_tau(z_final) || p_tau(z_middle)) + (1 - middle_kl) * CE(z_middle, y)
    the final head:          CE(z_final, y)

and before that only CE(z_final, y). The teacher's gradient thus reaches only the layers up to
the shallow tap and the shallow head. As in the authors' public code (ksouvik52/Skeptical2021),
the self-distillation KL is taken at the KD temperature without a tau^2 factor, with middle_kl
0.3, and z_final is not detached. The paper puts four heads on ResNets (one per stage, KD at
an early one, self-distillation at the 3/4 one); our defaults for the small digits students
are the first tap (shallow) and the deepest one (middle). Its value of the delay is not in the
public code: ``delay`` 2 epochs is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasty.errors import NastyError
from nasty.models._base import conv_bn
from nasty.objectives import kd_loss, kl_tau

from .base import Attack, register


def aux_head(shape: tuple[int, ...], *, width: int, num_classes: int) -> nn.Module:
    """A classifier on an intermediate output of ``shape`` (without the batch): (C, H, W) or (D,)."""
    if len(shape) == 3:
        return nn.Sequential(conv_bn(shape[0], width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))
    return nn.Sequential(nn.Linear(shape[0], width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))


class SkepticalStudent(nn.Module):
    """A zoo model with a shallow and a middle auxiliary head; ``forward`` is the model's own."""

    def __init__(self, net: nn.Module, *, shallow: str, middle: str, in_shape: tuple[int, ...]):
        super().__init__()
        self.net, self.points = net, (shallow, middle)
        was_training = net.training
        with torch.no_grad():  # the shapes at the taps, from one eval-mode forward (no BN update, no RNG)
            logits, seen = net.eval().forward_taps(torch.zeros(2, *in_shape), self.points)
        net.train(was_training)
        width, classes = net.num_features, logits.shape[1]
        self.shallow_head = aux_head(tuple(seen[shallow].shape[1:]), width=width, num_classes=classes)
        self.middle_head = aux_head(tuple(seen[middle].shape[1:]), width=width, num_classes=classes)

    def forward(self, x):
        return self.net(x)

    def forward_heads(self, x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(final, middle, shallow)`` logits from one forward."""
        final, seen = self.net.forward_taps(x, self.points)
        return final, self.middle_head(seen[self.points[1]]), self.shallow_head(seen[self.points[0]])


def skeptical_losses(final, middle, shallow, teacher_logits, y, *, alpha: float, tau: float, middle_kl: float,
                     distil: bool) -> dict[str, torch.Tensor]:
    """The named losses of one batch (their sum is minimised); ``distil`` False: before the delay."""
    final, middle, shallow = final.float(), middle.float(), shallow.float()
    losses = {"ce": F.cross_entropy(final, y)}
    if distil:
        losses["kd"] = kd_loss(shallow, teacher_logits, y, alpha=alpha, tau=tau)[0]
        losses["self"] = middle_kl * kl_tau(final, middle, tau) + (1.0 - middle_kl) * F.cross_entropy(middle, y)
    return losses


@register
class Skeptical(Attack):
    name = "skeptical"
    cost = 1.3  # its auxiliary heads (1.1x a KD cell on digit pairs, 2x on digits)

    def __init__(self, *, alpha: float = 0.9, tau: float = 4.0, delay: int = 2, shallow: int = 0, middle: int = -1,
                 middle_kl: float = 0.3):
        if int(delay) != delay or delay < 0:
            raise NastyError(f"skeptical.delay must be a whole number of epochs >= 0, got {delay}")
        if not 0.0 <= middle_kl <= 1.0:
            raise NastyError(f"skeptical.middle_kl must be in [0, 1], got {middle_kl}")
        self.alpha, self.tau, self.delay = alpha, tau, int(delay)
        self.shallow, self.middle, self.middle_kl = int(shallow), int(middle), middle_kl

    def student(self, model, data):
        taps = list(getattr(model, "taps", {}))
        if len(taps) < 2:
            raise NastyError(f"skeptical needs a student with at least two named taps (a zoo model); "
                             f"{type(model).__name__} has {len(taps)}")
        n = len(taps)
        for what, i in (("shallow", self.shallow), ("middle", self.middle)):
            if not -n <= i < n:
                raise NastyError(f"skeptical.{what} must index the student's taps {taps} (from {-n} to {n - 1}), "
                                 f"got {i}")
        if self.shallow % n >= self.middle % n:
            raise NastyError(f"skeptical.shallow ({taps[self.shallow]}) must be shallower than skeptical.middle "
                             f"({taps[self.middle]}) in {taps}")
        return SkepticalStudent(model, shallow=taps[self.shallow], middle=taps[self.middle],
                                in_shape=tuple(data.input_shape))

    def check_epochs(self, epochs):
        if self.delay >= epochs:
            raise NastyError(f"skeptical.delay ({self.delay}) must be below the student epochs ({epochs}), "
                             f"or the teacher is never used")

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        self.check_epochs(epochs)
        return None

    def step(self, ctx, student, x, teacher_logits, y, *, epoch, arch):
        final, middle, shallow = student.forward_heads(x)
        return final.float(), skeptical_losses(final, middle, shallow, teacher_logits, y, alpha=self.alpha,
                                               tau=self.tau, middle_kl=self.middle_kl, distil=epoch >= self.delay)
