"""DAFL: data-free learning of student networks (Chen et al., ICCV 2019).

A generator G(z) learns, against the frozen teacher T, to produce inputs that T classifies
confidently, that excite its penultimate features, and that cover all classes:

    L_G = one_hot    * CE(T(G(z)), argmax T(G(z)))     one-hot loss
        - activation * mean |f_T(G(z))|                activation loss (penultimate features)
        + entropy    * sum_c pbar_c log pbar_c         information entropy, pbar = batch-mean softmax

(the paper's weights are named oh, a and ie; older audits recorded them under those names).

Each step updates G once, then the students learn tau^2 * KL(p_T || p_S) on G(z).detach().
No real image is used. Published: MNIST LeNet-5 98.20%, CIFAR-10 ResNet-34 -> ResNet-18 92.22%
(with batch 512 / 256 and thousands of epochs); our defaults are sized for digits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nasty import accel
from nasty.data import mix_seed
from nasty.errors import NastyError
from nasty.objectives import kd_loss

from .base import Attack, labelled, register


class Generator(nn.Module):
    """z -> image in the teacher's normalised input space (DAFL's generator, any image size)."""

    def __init__(self, *, latent: int, channels: int, size: tuple[int, int], width: int = 128):
        super().__init__()
        self.size = size
        self.init = max(1, math.ceil(size[0] / 4)), max(1, math.ceil(size[1] / 4))
        self.width = width
        self.fc = nn.Linear(latent, width * self.init[0] * self.init[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z):
        x = self.body(self.fc(z).view(len(z), self.width, *self.init))
        return x if tuple(x.shape[-2:]) == tuple(self.size) else F.interpolate(x, size=self.size, mode="bilinear")


def dafl_generator_loss(logits, features, *, one_hot: float, activation: float, entropy: float):
    """The three DAFL terms, weighted by ``one_hot``, ``activation`` and ``entropy``; returns
    ``(loss, terms)`` like every objective here."""
    terms = {"one_hot": F.cross_entropy(logits, logits.argmax(dim=1)), "activation": -features.abs().mean()}
    pbar = F.softmax(logits, dim=1).mean(dim=0)
    terms["entropy"] = (pbar * torch.log(pbar.clamp_min(1e-12))).sum()  # minimising it balances the classes
    loss = one_hot * terms["one_hot"] + activation * terms["activation"] + entropy * terms["entropy"]
    return loss, {k: v.detach() for k, v in terms.items()}


@register
class DAFL(Attack):
    name = "dafl"
    cost = 7.0  # its generator trained beside the students (7x a KD cell on digits)
    sample_mean = True
    data_free = True

    renamed = {"oh": "one_hot", "a": "activation", "ie": "entropy"}  # old setting names -> new

    def __init__(self, *, tau: float = 4.0, one_hot: float = 1.0, activation: float = 0.1, entropy: float = 5.0,
                 latent: int = 100, lr_g: float = 1e-3):
        self.tau, self.one_hot, self.activation, self.entropy = tau, one_hot, activation, entropy
        self.latent, self.lr_g = latent, lr_g

    def check(self, teacher):
        if not hasattr(teacher, "forward_features"):
            raise NastyError("dafl needs the teacher's penultimate features (forward_features); "
                             "use a model from the zoo, tv:<name> or timm:<name>")

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        self.check(teacher)
        torch.manual_seed(mix_seed(seed, 21))  # same generator init whichever teacher it faces
        c, h, w = data.input_shape
        gen = Generator(latent=self.latent, channels=c, size=(h, w)).to(device)
        opt = torch.optim.Adam(gen.parameters(), lr=self.lr_g)
        noise = torch.Generator(device=device).manual_seed(mix_seed(seed, 22))
        return {"teacher": teacher, "gen": gen, "opt": opt, "noise": noise, "batch": batch_size, "device": device,
                "seed": seed}

    def state(self, ctx):
        return {"gen": ctx["gen"].state_dict(), "opt": ctx["opt"].state_dict(), "noise": ctx["noise"].get_state()}

    def restore(self, ctx, state):
        ctx["gen"].load_state_dict(state["gen"])
        ctx["opt"].load_state_dict(state["opt"])
        ctx["noise"].set_state(state["noise"])

    def inputs(self, ctx, x, y, *, step, epoch):
        gen, teacher = ctx["gen"], ctx["teacher"]
        z = torch.randn(ctx["batch"], self.latent, device=ctx["device"], generator=ctx["noise"])
        gen.train()
        fake = gen(z)
        features = teacher.forward_features(fake)
        logits = teacher.forward_head(features)
        loss, _ = dafl_generator_loss(logits.float(), features.float(), one_hot=self.one_hot,
                                      activation=self.activation, entropy=self.entropy)
        ctx["opt"].zero_grad(set_to_none=True)
        loss.backward()
        ctx["opt"].step()
        return fake.detach(), logits.detach().float()

    def loss(self, student_logits, teacher_logits, y):
        # no labels: alpha 1 keeps only the KL term (the CE term is reported against argmax T)
        return kd_loss(student_logits, teacher_logits, teacher_logits.argmax(dim=1), alpha=1.0, tau=self.tau)

    def synthesized(self, ctx, count):
        """``count`` images of the generator as it stands (eval mode, its own noise: the training
        stream is left alone) and the teacher's labels for them."""
        gen = ctx["gen"]
        was_training = gen.training
        gen.eval()
        noise = torch.Generator(device=ctx["device"]).manual_seed(mix_seed(ctx["seed"], 23))
        z = torch.randn(count, self.latent, device=ctx["device"], generator=noise)
        with torch.no_grad():
            x = gen(z)
        gen.train(was_training)
        return labelled(ctx["teacher"], x)

    def sample(self, teacher, data, *, count: int = 64, steps: int = 300, seed: int = 0, device=None):
        """``count`` generated images and the teacher's labels for them, after ``steps`` generator
        updates against ``teacher``, on ``device`` (default: the teacher's). For ``nasty plot images``;
        an audit shows what its own generator made (:meth:`synthesized`) and trains nothing again."""
        device = accel.device_of(teacher) if device is None else torch.device(device)
        teacher.to(device).eval().requires_grad_(False)
        ctx = self.setup(teacher, data, seed=seed, batch_size=count, epochs=1, device=device)
        for step in range(steps):
            self.inputs(ctx, None, None, step=step, epoch=0)
        return self.synthesized(ctx, count)
