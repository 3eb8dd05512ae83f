"""The interface every attack keeps, and the one loop that runs them all.

An attack is a way for a thief to teach a student from a frozen teacher. It decides these
things, and nothing else:

    model = attack.student(model, data)                              # what it trains (e.g. + auxiliary heads)
    ctx = attack.setup(teacher, data, seed=..., batch_size=..., epochs=..., device=..., config=...)  # per teacher
    x, t = attack.inputs(ctx, x_real, y_real, step=..., epoch=...)   # what the students see
    logits, losses = attack.step(ctx, student, x, t, y, epoch=..., arch=...)  # one student's step
    attack.state(ctx) / attack.restore(ctx, state)                   # what a resumed run needs of ctx
    attack.synthesized(ctx, count)                                   # data-free: images it made, for reports

:meth:`Attack.step` owns the student's forward (so it can read intermediate features, as
mdistiller's ``Distiller.forward_train`` does) and returns the final logits and named losses,
whose sum is what that student minimises. Its default is ``loss(student(x), t, y)``: most
attacks only override :meth:`Attack.loss`. Attacks register by name with :func:`register`.

:func:`run_students` trains students for several teachers at once ("sources": ``scratch``,
``normal``, ``nasty``). Per batch, each teacher runs one forward, shared by every student
that learns from it; every source sees the same data order, the same student initialisation
and the same number of steps, so the only difference between the sides is the teacher.
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nasty import accel
from nasty.accel import autocast, prepare
from nasty.data import TensorData, mix_seed
from nasty.errors import NastyError
from nasty.models import create_model
from nasty.objectives import cross_entropy
from nasty.trainer import TrainConfig, evaluate, frozen_logits, make_optimizer

__all__ = ["ATTACKS", "Attack", "LabelSmoothing", "Scratch", "StudentBank", "labelled", "register", "run_students"]

ATTACKS: dict[str, type["Attack"]] = {}  # by name, in the order they were registered


def register(cls: type["Attack"]) -> type["Attack"]:
    """Class decorator: make an attack known by its ``name`` (``--attacks NAME``)."""
    if not cls.name or cls.name in ATTACKS:
        raise ValueError(f"attack {cls.name!r} has no name or is registered twice")
    ATTACKS[cls.name] = cls
    return cls


class Attack:
    """Base class. Subclasses set ``name`` and override :meth:`loss` (and maybe the others).

    ``data_free`` attacks never touch the real training images: the loop only counts steps.
    """

    name = ""
    data_free = False

    def check(self, teacher: nn.Module) -> None:
        """Raise a clear error if this attack cannot run against ``teacher`` (called before any training)."""

    def check_data(self, data: TensorData) -> None:
        """Raise a clear error if this attack's settings do not fit ``data`` (called before any training)."""

    def student(self, model: nn.Module, data: TensorData) -> nn.Module:
        """The module this attack trains for a student ``model`` (called right after the model is
        built, same seed); its ``forward`` must stay the model's plain forward, which is evaluated."""
        return model

    def setup(self, teacher: nn.Module | None, data: TensorData, *, seed: int, batch_size: int, epochs: int,
              device, quiet: bool = True, config: TrainConfig | None = None):
        """Per-teacher state (a generator, an image pool); ``None`` when there is none."""
        return None

    def start_epoch(self, ctx, epoch: int, students: "StudentBank") -> None:
        """Called at the start of every epoch, per teacher, with that teacher's students."""

    def inputs(self, ctx, x: torch.Tensor | None, y: torch.Tensor | None, *, step: int, epoch: int):
        """The batch the students see and, if the attack already has them, the teacher's logits."""
        return x, None

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor | None):
        """``(loss, terms)`` from the student's logits (what :meth:`step` uses by default)."""
        raise NotImplementedError

    def step(self, ctx, student: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor | None,
             y: torch.Tensor | None, *, epoch: int, arch: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One student's forward on ``x``: its logits and named losses (their sum is minimised).
        ``arch`` is the student's architecture name, ``ctx`` this teacher's state."""
        z = student(x).float()
        return z, {"loss": self.loss(z, teacher_logits, y)[0]}

    def notes(self, ctx) -> dict:
        """What a finished run learned that the report should show (e.g. a chosen temperature)."""
        return {}

    def settings(self) -> dict:
        """What identifies this attack's results (goes into the audit's cell keys)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def state(self, ctx) -> dict:
        """What of ``ctx`` changes during training and must be saved to resume (tensors, state
        dicts, RNG states: what ``torch.load(weights_only=True)`` reads back)."""
        return {}

    def restore(self, ctx, state: dict) -> None:
        """Put a :meth:`state` back into a fresh ``ctx`` from :meth:`setup`."""

    def synthesized(self, ctx, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Up to ``count`` of the images this attack made from its teacher (as training left them),
        with the teacher's labels, on the CPU; ``None`` for attacks that use real images. What an
        audit keeps of a cell to show in its report, without training anything again."""
        return None


@torch.no_grad()
def labelled(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and the teacher's class for each image, both on the CPU (``x`` on the teacher's device)."""
    device = accel.device_of(teacher)
    return x.detach().float().cpu(), frozen_logits(teacher, x.to(device), device).argmax(dim=1).cpu()


class Scratch(Attack):
    """The baseline: no teacher, cross-entropy on the real labels."""

    name = "scratch"

    def loss(self, student_logits, teacher_logits, y):
        return cross_entropy(student_logits, y)


class LabelSmoothing(Attack):
    """The stricter baseline (CMIM's test of undistillability): no teacher, cross-entropy on the
    real labels smoothed by ``smoothing`` (the true class gets 1 - smoothing + smoothing / C)."""

    name = "label-smoothing"

    def __init__(self, *, smoothing: float = 0.1):
        if not 0.0 <= smoothing < 1.0:
            raise NastyError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def loss(self, student_logits, teacher_logits, y):
        ce = F.cross_entropy(student_logits.float(), y, label_smoothing=self.smoothing)
        return ce, {"ce": ce.detach()}


class StudentBank(nn.Module):
    """Several independent students behind one forward: ``(S, B, C)`` logits.

    They share no parameters, and SGD (momentum, weight decay) works per parameter, so each
    student gets exactly the updates it would get if it were trained alone.
    """

    def __init__(self, students: dict[str, nn.Module]):
        super().__init__()
        self.names = list(students)
        self.students = nn.ModuleList(students.values())

    def forward(self, x):
        return torch.stack([s(x) for s in self.students])


def make_students(archs: list[str], data: TensorData, *, seed: int, attack: Attack | None = None) -> StudentBank:
    """The same initial weights for a given (architecture, seed), whichever teacher they face
    (and whichever attack: what ``attack.student`` adds is made after the model)."""
    made = {}
    for arch in archs:
        torch.manual_seed(mix_seed(seed, zlib.crc32(arch.encode()), 11))  # not the position: alone == in a bank
        model = create_model(arch, num_classes=data.num_classes, in_chans=data.input_shape[0])
        made[arch] = attack.student(model, data) if attack is not None else model
    return StudentBank(made)


def run_students(attack: Attack, teachers: dict[str, nn.Module | None], students: list[str], data: TensorData, *,
                 config: TrainConfig, device, quiet: bool = True, desc: str = "", resume: dict | None = None,
                 save: Callable[[dict], None] | None = None, notes: dict | None = None, images: dict | None = None,
                 image_count: int = 40) -> dict[tuple[str, str], float]:
    """Train ``students`` against each teacher with ``attack``; return final-epoch test accuracy
    (percent) per ``(source, student)``. ``config`` gives epochs, batch size, LR schedule, seed.

    ``images``, a dict, receives per source ``(images, labels)``: ``image_count`` of the images a
    data-free attack synthesised from that teacher (:meth:`Attack.synthesized`), after training.

    ``save(state)`` is offered the training state after every epoch but the last (the caller
    decides whether to write it); ``resume`` is such a state to go on from. Every epoch seeds its
    own randomness, so a resumed run ends exactly where an uninterrupted one does (on the CPU).
    ``notes``, a dict, receives ``attack.notes(ctx)`` per teacher at the end (where not empty).
    """
    from tqdm.auto import tqdm

    config.check()
    device = torch.device(device)
    for t in teachers.values():
        if t is not None:
            prepare(t, device).eval().requires_grad_(False)
    banks = prepare(nn.ModuleDict({src: make_students(students, data, seed=config.seed, attack=attack)
                                   for src in teachers}), device)
    contexts = {src: attack.setup(t, data, seed=config.seed, batch_size=config.batch_size, epochs=config.epochs,
                                  device=device, quiet=quiet, config=config) for src, t in teachers.items()}
    opt, sched = make_optimizer(banks.parameters(), config)
    start = 0
    if resume is not None:
        banks.load_state_dict(resume["students"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        for src, ctx_state in resume["attack"].items():
            attack.restore(contexts[src], ctx_state)
        start = int(resume["epoch"])
    steps = max(1, len(data.train_y) // config.batch_size)
    bar = tqdm(total=config.epochs * steps, initial=start * steps, desc=desc or attack.name,
               disable=True if quiet else None, unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start, config.epochs):
            torch.manual_seed(mix_seed(config.seed, epoch, 2))
            banks.train()
            for src in teachers:
                attack.start_epoch(contexts[src], epoch, banks[src])
            real = (iter(()) if attack.data_free else
                    data.batches("train", batch_size=config.batch_size, device=device, seed=config.seed, epoch=epoch))
            for step in range(steps):
                x_real, y_real = (None, None) if attack.data_free else next(real)
                total = 0.0
                for src, teacher in teachers.items():
                    x, t = attack.inputs(contexts[src], x_real, y_real, step=step, epoch=epoch)
                    if t is None and teacher is not None:
                        t = frozen_logits(teacher, x, device)  # once, for every student of this teacher
                    for arch, student in zip(students, banks[src].students):
                        with autocast(device):
                            _, losses = attack.step(contexts[src], student, x, t, y_real, epoch=epoch, arch=arch)
                        total = total + sum(losses.values())
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if step == 0 and not torch.isfinite(total.detach()):
                    raise NastyError(f"{attack.name}: the student loss became NaN/inf at epoch {epoch + 1}; "
                                     f"try a smaller --lr or --tau")
                bar.update(1)
            sched.step()
            if save is not None and epoch + 1 < config.epochs:
                save({"epoch": epoch + 1, "students": banks.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(),
                      "attack": {src: attack.state(ctx) for src, ctx in contexts.items()}})
    finally:
        bar.close()
    if notes is not None:
        notes.update({src: n for src, ctx in contexts.items() if (n := attack.notes(ctx))})
    if images is not None:
        for src, ctx in contexts.items():
            made = attack.synthesized(ctx, image_count)
            if made is not None:
                images[src] = made
    return {(src, name): evaluate(student, data, device=device)["accuracy"]
            for src in teachers for name, student in zip(students, banks[src].students)}
