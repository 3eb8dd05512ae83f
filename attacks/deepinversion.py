"""DeepInversion (Yin et al., CVPR 2020): invert the teacher into a pool of images, then distil.

Each pool batch starts from noise with target classes y (balanced) and is optimised with Adam
for

    CE(T(x~), y) + bn * sum_l (||mu_l(x~) - running_mean_l||_2 + ||var_l(x~) - running_var_l||_2)
                 + tv * TV(x) + l2 * ||x||_2

where x~ is x randomly shifted by up to ``jitter`` pixels (and flipped when the dataset is
flipped in training), mu_l/var_l are the batch mean and biased variance of the input of each
BatchNorm layer l of the teacher (read by forward hooks, removed afterwards), and the teacher
stays in eval(). Pixels are kept in the valid range. The students then learn
tau^2 * KL(p_T || p_S) on the pool. No real image is used. Adaptive DI (``competition > 0``)
adds ``competition * (1 - JS(p_T || p_S))`` against the current student.

Published CIFAR-10 settings (ResNet-34 -> ResNet-18, 93.26%): batch 256, Adam lr 0.05-0.1,
bn 10, 2k iterations per batch, KD at tau 3. Our defaults are sized for digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasty import accel
from nasty.data import augment, mix_seed
from nasty.errors import NastyError
from nasty.objectives import kd_loss

from .base import Attack, labelled, register

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (DI's L2 total variation)."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


class BNStats:
    """Forward hooks on every BatchNorm layer: the distance of each batch's input statistics
    to the layer's running statistics. Use as a context manager; the hooks go on exit."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, _BN) and m.running_mean is not None]
        self.losses: list[torch.Tensor] = []
        self._handles = []

    def _hook(self, module, inputs, output):
        x = inputs[0].float()
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.losses.append(torch.linalg.vector_norm(mean - module.running_mean) +
                           torch.linalg.vector_norm(var - module.running_var))

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def pop(self) -> torch.Tensor:
        total, self.losses = torch.stack(self.losses).sum(), []
        return total


def deepinversion_loss(logits, targets, bn_loss, images, *, bn: float, tv: float, l2: float):
    """The DI objective for one batch; returns ``(loss, terms)``."""
    ce = F.cross_entropy(logits.float(), targets)
    smooth = total_variation(images)
    norm = torch.linalg.vector_norm(images.flatten(1), dim=1).mean()
    loss = ce + bn * bn_loss + tv * smooth + l2 * norm
    return loss, {"ce": ce.detach(), "bn": bn_loss.detach(), "tv": smooth.detach(), "l2": norm.detach()}


def competition_loss(teacher_logits, student_logits):
    """Adaptive DI's competition term, 1 - JS(p_T || p_S): small where teacher and student disagree."""
    p, q = F.softmax(teacher_logits.float(), dim=1), F.softmax(student_logits.float(), dim=1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(dim=1)  # noqa: E731
    js = (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()
    return 1.0 - js


@register
class DeepInversion(Attack):
    """The pool is made in ``rounds`` chunks spread evenly over the epochs (one chunk, before
    the first epoch, by default); the students always train on the pool made so far. With
    ``competition > 0`` this is Adaptive DeepInversion: each chunk also rewards images on which
    the current student (the first of the audit's students) disagrees with the teacher."""

    name = "deepinversion"
    cost = 12.0  # images synthesised by optimisation (12x a KD cell on digits)
    sample_mean = True
    data_free = True

    def __init__(self, *, tau: float = 4.0, pool_size: int = 512, iterations: int = 200, lr: float = 0.1,
                 bn: float = 1.0, tv: float = 1e-3, l2: float = 1e-5, jitter: int = 1, competition: float = 0.0,
                 rounds: int = 1):
        self.tau, self.pool_size, self.iterations, self.lr = tau, pool_size, iterations, lr
        self.bn, self.tv, self.l2, self.jitter = bn, tv, l2, jitter
        self.competition, self.rounds = competition, rounds

    def check(self, teacher):
        if not BNStats(teacher).layers:
            raise NastyError("deepinversion needs a teacher with BatchNorm layers (it matches their statistics); "
                             "this teacher has none: audit it with `attacks` kd,hard-label,dafl")
        if not 1 <= self.rounds <= self.pool_size:
            raise NastyError(f"deepinversion.rounds must be between 1 and the pool size ({self.pool_size}), "
                             f"got {self.rounds}")

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        self.check(teacher)
        return {"teacher": teacher, "data": data, "seed": seed, "batch": batch_size, "device": device, "quiet": quiet,
                "noise": torch.Generator(device=device).manual_seed(mix_seed(seed, 33)), "chunks": [],
                "due": [k * epochs // self.rounds for k in range(self.rounds)]}  # the epoch each chunk is made

    def start_epoch(self, ctx, epoch, students):
        rival = students.students[0] if self.competition > 0 else None
        for k in (k for k, e in enumerate(ctx["due"]) if e == epoch):
            first, stop = self.pool_size * k // self.rounds, self.pool_size * (k + 1) // self.rounds
            ctx["chunks"].append(synthesize(ctx["teacher"], ctx["data"], attack=self, first=first, count=stop - first,
                                            noise=ctx["noise"], batch_size=ctx["batch"], device=ctx["device"],
                                            quiet=ctx["quiet"], rival=rival))
            ctx["pool"] = torch.cat(ctx["chunks"])

    def state(self, ctx):
        # the chunks made so far (the pool) and where the noise stream stands for the next ones
        return {"chunks": list(ctx["chunks"]), "noise": ctx["noise"].get_state()}

    def restore(self, ctx, state):
        ctx["chunks"] = [c.to(ctx["device"]) for c in state["chunks"]]
        ctx["noise"].set_state(state["noise"])
        if ctx["chunks"]:
            ctx["pool"] = torch.cat(ctx["chunks"])

    def inputs(self, ctx, x, y, *, step, epoch):
        pool, b, data = ctx["pool"], ctx["batch"], ctx["data"]
        if ctx.get("epoch") != epoch:  # a new order of the pool each epoch
            gen = torch.Generator().manual_seed(mix_seed(ctx["seed"], epoch, 31))
            ctx["epoch"], ctx["order"] = epoch, torch.randperm(len(pool), generator=gen).to(pool.device)
        start = (step * b) % len(pool)
        idx = ctx["order"][start:start + b]
        aug = torch.Generator(device=pool.device).manual_seed(mix_seed(ctx["seed"], epoch, step, 32))
        return augment(pool[idx], pad=data.pad, flip=data.flip, generator=aug), None

    def loss(self, student_logits, teacher_logits, y):
        return kd_loss(student_logits, teacher_logits, teacher_logits.argmax(dim=1), alpha=1.0, tau=self.tau)

    def synthesized(self, ctx, count):
        """The first ``count`` images of the pool (target classes cycle) and the teacher's labels."""
        return labelled(ctx["teacher"], ctx["pool"][:count]) if "pool" in ctx else None

    def sample(self, teacher, data, *, count: int = 64, seed: int = 0, device=None):
        """``count`` inverted images (target classes cycling) and the teacher's labels for them, made on
        ``device`` (default: the teacher's). For ``nasty plot images``; an audit shows its own pool."""
        device = accel.device_of(teacher) if device is None else torch.device(device)
        teacher.to(device).eval().requires_grad_(False)
        self.check(teacher)
        x = synthesize(teacher, data, attack=self, first=0, count=count, batch_size=count, device=device,
                       noise=torch.Generator(device=device).manual_seed(mix_seed(seed, 33)))
        return labelled(teacher, x)


def synthesize(teacher: nn.Module, data, *, attack: DeepInversion, first: int, count: int, noise: torch.Generator,
               batch_size: int, device, quiet: bool = True, rival: nn.Module | None = None) -> torch.Tensor:
    """``count`` images for target classes ``first, first + 1, ...`` (cycling), in the teacher's
    normalised input space. ``noise`` draws the starting images and the jitter."""
    from tqdm.auto import tqdm

    c, h, w = data.input_shape
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    batches, made = [], 0
    teacher.eval()
    rival_state = None
    if rival is not None:  # judged as it is now; neither its weights nor its BN statistics change
        rival_state = rival.training, [p.requires_grad for p in rival.parameters()]
        rival.eval().requires_grad_(False)
    stats = BNStats(teacher)
    bar = tqdm(total=count, desc="deepinversion pool", disable=True if quiet else None, leave=False,
               unit="img", dynamic_ncols=True)
    try:
        with stats:
            while made < count:
                n = min(batch_size, count - made)
                y = (torch.arange(first + made, first + made + n, device=device) % data.num_classes)
                x = torch.randn(n, c, h, w, device=device, generator=noise).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=attack.lr, betas=(0.5, 0.9))
                for _ in range(attack.iterations):
                    dx, dy = (int(v) for v in torch.randint(-attack.jitter, attack.jitter + 1, (2,), generator=noise,
                                                           device=device))
                    xj = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
                    if data.flip and torch.rand((), generator=noise, device=device) < 0.5:
                        xj = xj.flip(3)
                    logits = teacher(xj)  # the hooks collect the BN statistics of this forward
                    loss, _ = deepinversion_loss(logits, y, stats.pop(), x, bn=attack.bn, tv=attack.tv, l2=attack.l2)
                    if rival is not None:
                        loss = loss + attack.competition * competition_loss(logits, rival(xj))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                batches.append(x.detach().clone())
                made += n
                bar.update(n)
    finally:
        bar.close()
        if rival_state is not None:
            rival.train(rival_state[0])
            for p, flag in zip(rival.parameters(), rival_state[1]):
                p.requires_grad_(flag)
    return torch.cat(batches)
