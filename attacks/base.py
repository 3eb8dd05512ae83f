"""The interface every attack keeps, and the one loop that runs them all.

An attack is a way for a thief to teach a student from a frozen teacher. It decides these
things, and nothing else:

    model = attack.student(model, data)                              # what it trains (e.g. + auxiliary heads)
    ctx = attack.setup(teacher, data, seed=..., batch_size=..., epochs=..., device=..., config=..., source=...)
    x, t = attack.inputs(ctx, x_real, y_real, step=..., epoch=...)   # what the students see
    logits, losses = attack.step(ctx, student, x, t, y, epoch=..., arch=...)  # one student's step
    losses = attack.losses(ctx, logits, t, y, epoch=..., arch=...)   # ... from its logits alone
    attack.state(ctx) / attack.restore(ctx, state)                   # what a resumed run needs of ctx
    attack.synthesized(ctx, count)                                   # data-free: images it made, for reports

:meth:`Attack.step` owns the student's forward (so it can read intermediate features, as
mdistiller's ``Distiller.forward_train`` does) and returns the final logits and named losses,
whose sum is what that student minimises. Its default is :meth:`Attack.losses` of
``student(x)``, whose default is :meth:`Attack.loss`: most attacks only override that. An attack
that keeps the default ``step`` has its students' forward and backward replayed as CUDA graphs
on a GPU (:mod:`attacks._graphs`), or, on request, trained as one batched ensemble
(:mod:`attacks._ensemble`: one vmapped forward for an architecture's students). Attacks
register by name with :func:`register`.

:func:`run_students` trains students for several teachers at once ("sources": ``scratch``,
``normal``, ``nasty``); :func:`run_cells` does so for several seeds at once. Per batch, each
teacher runs one forward, shared by every student that learns from it; every source sees the
same data order, the same student initialisation and the same number of steps, so the only
difference between the sides is the teacher.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from nasty import accel
from nasty.accel import autocast, prepare
from nasty.data import TensorData, mix_seed
from nasty.errors import Diverged, NastyError
from nasty.models import create_model
from nasty.trainer import TrainConfig, evaluate, frozen_logits, make_optimizer

from ._ensemble import Ensemble, momentum_from_members, momentum_to_members
from ._graphs import StepGraph, capture

__all__ = ["ATTACKS", "Attack", "StudentBank", "batchable", "graphs_for", "labelled",
           "register", "run_cells", "run_students"]

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
    ``sample_mean`` attacks promise that :meth:`loss` is a mean over the batch of per-sample terms
    (as KD's and cross-entropy's are), so that the sum of M students' losses on batches of equal
    size is M times the loss of their batches joined: an ensemble then computes it in one call.
    """

    name = ""
    data_free = False
    labels_only = False  # reads nothing of the teacher but its top-1 answers: no defence of the outputs can act on it
    sample_mean = False  # loss() is a mean over samples, each sample's term its own: an ensemble scores all in one call
    # the rough time of one cell (one seed, both sides) against a KD cell's; a grid shared by several
    # processes is claimed costliest first (attacks.scale), so that no process ends it alone on a long cell
    cost = 1.0

    def check(self, teacher: nn.Module) -> None:
        """Raise a clear error if this attack cannot run against ``teacher`` (called before any training)."""

    def check_data(self, data: TensorData) -> None:
        """Raise a clear error if this attack's settings do not fit ``data`` (called before any training)."""

    def check_epochs(self, epochs: int) -> None:
        """Raise a clear error if this attack's settings do not fit a student schedule of ``epochs``
        (called before any training, and by :meth:`setup` where it matters)."""

    def student(self, model: nn.Module, data: TensorData) -> nn.Module:
        """The module this attack trains for a student ``model`` (called right after the model is
        built, same seed); its ``forward`` must stay the model's plain forward, which is evaluated."""
        return model

    def setup(self, teacher: nn.Module | None, data: TensorData, *, seed: int, batch_size: int, epochs: int,
              device, quiet: bool = True, config: TrainConfig | None = None, source: str = ""):
        """Per-teacher state (a generator, an image pool); ``None`` when there is none. ``source``
        is the teacher's name in the run (``nasty``, ``normal``, ...)."""
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
        ``arch`` is the student's architecture name, ``ctx`` this teacher's state. An attack that
        overrides this (to read features) is trained one student at a time, never as an ensemble."""
        z = student(x).float()
        return z, self.losses(ctx, z, teacher_logits, y, epoch=epoch, arch=arch)

    def losses(self, ctx, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor | None,
               *, epoch: int, arch: str) -> dict[str, torch.Tensor]:
        """The named losses of one student from its logits alone: what :meth:`step` returns by
        default, and what a batched ensemble of students (:mod:`attacks._ensemble`) is trained on."""
        return {"loss": self.loss(student_logits, teacher_logits, y)[0]}

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


def graphs_for(attack: Attack, device) -> str | bool:
    """How :func:`run_cells` trains students by default (not as an ensemble): ``"step"`` on a CUDA
    device when the attack does not own the forward (:meth:`Attack.step`): each epoch's training
    step, every student's forward, loss and backward and the optimizers' steps, replayed as one CUDA
    graph (:class:`attacks._graphs.StepGraph`); ``False`` (eager) elsewhere. Small students are
    bound by kernel launches on a GPU: on one H100, KD cells of 3 seeds took 3.1-5.4x less time per
    student-epoch than the eager loop for the four zoo students. Against each student's forward
    and backward replayed alone (``graphs=True``) it was 1.4-2.6x faster for cnn, resnetc32 and
    resnet18 and 5% slower for resnetc20 (docs/speed.md has the figures)."""
    return "step" if torch.device(device).type == "cuda" and batchable(attack) else False


def batchable(attack: Attack) -> bool:
    """Can ``attack``'s students be trained as an ensemble? Not when it overrides :meth:`Attack.step`."""
    return type(attack).step is Attack.step


def run_students(attack: Attack, teachers: dict[str, nn.Module | None], students: list[str], data: TensorData, *,
                 config: TrainConfig, device, quiet: bool = True, desc: str = "", resume: dict | None = None,
                 save: Callable[[dict], None] | None = None, notes: dict | None = None, images: dict | None = None,
                 image_count: int = 40, ensemble: bool = False, graphs: bool | str | None = None,
                 ) -> dict[tuple[str, str], float]:
    """Train ``students`` against each teacher with ``attack``; return final-epoch test accuracy
    (percent) per ``(source, student)``. ``config`` gives epochs, batch size, LR schedule, seed.

    ``images``, a dict, receives per source ``(images, labels)``: ``image_count`` of the images a
    data-free attack synthesised from that teacher (:meth:`Attack.synthesized`), after training.

    ``save(state)`` is offered the training state after every epoch but the last (the caller
    decides whether to write it, at once: the state holds the live tensors); ``resume`` is such a
    state to go on from. Every epoch seeds its own randomness, so a resumed run ends exactly where
    an uninterrupted one does (on the CPU). ``notes``, a dict, receives ``attack.notes(ctx)`` per
    teacher at the end (where not empty).

    ``ensemble``: train the students of one architecture (one per teacher) as one batched
    ensemble (:mod:`attacks._ensemble`). ``graphs="step"`` replays the whole step, every
    student's loss and the optimizers' steps included (the ensemble's too), as one CUDA graph per
    epoch (:class:`attacks._graphs.StepGraph`; on the CPU it walks the same data path without
    capturing); ``graphs=True`` replays each student's training forward and backward alone as
    CUDA graphs (:mod:`attacks._graphs`); ``None`` decides by :func:`graphs_for` (eager with an
    ensemble). All ways train the same students from the same state (to float rounding)
    and save the same state format, so a run may resume another way.
    :func:`run_cells` trains several seeds at once.
    """
    seed = config.seed
    per_notes, per_images = {}, {}
    acc = run_cells(attack, teachers, students, data, config=config, seeds=[seed], device=device, quiet=quiet,
                    desc=desc, resume=None if resume is None else {seed: resume},
                    save=None if save is None else lambda states: save(states[seed]),
                    notes=per_notes, images=per_images, image_count=image_count, ensemble=ensemble, graphs=graphs)
    if notes is not None:
        notes.update(per_notes.get(seed, {}))
    if images is not None:
        images.update(per_images.get(seed, {}))
    return acc[seed]


def run_cells(attack: Attack, teachers: dict[str, nn.Module | None], students: list[str], data: TensorData, *,
              config: TrainConfig, seeds: list[int], device, quiet: bool = True, desc: str = "",
              resume: dict[int, dict] | None = None, save: Callable[[dict[int, dict]], None] | None = None,
              notes: dict | None = None, images: dict | None = None, image_count: int = 40,
              ensemble: bool = False, graphs: bool | str | None = None) -> dict[int, dict[tuple[str, str], float]]:
    """:func:`run_students` for several seeds at once (``config.seed`` is not used): per seed its
    own students, data order and attack state, exactly one audit cell's worth each; with an
    ensemble, an architecture's students of every seed and teacher are one ensemble. ``resume``,
    ``save``'s argument, ``notes``, ``images`` and the result are per seed, and a seed's state has
    :func:`run_students`' format. Dropout draws from one stream for all seeds (the first seed's),
    so a seed trained with others ends within noise of itself trained alone, not bit for bit.
    """
    from tqdm.auto import tqdm

    config.check()
    seeds = list(dict.fromkeys(seeds))
    device = torch.device(device)
    graphs = _way(attack, device, ensemble=ensemble, graphs=graphs)
    if resume is not None and set(resume) != set(seeds):
        raise ValueError(f"resume needs one state per seed of {seeds}, got {sorted(resume)}")
    cells = _Cells.build(attack, teachers, students, data, config=config, seeds=seeds, device=device, quiet=quiet,
                         ensemble=ensemble)
    start = 0 if resume is None else cells.restore(resume)
    captured = set() if graphs is True else None  # id() of each student capture was tried on (replays, or eager)

    def train_step(batches, labels):  # the teachers' logits, every student's step, then the optimizers'; the summed loss
        return cells.step(batches, labels, epoch=epoch, captured=captured, cache=whole is None)

    whole = StepGraph(train_step, device=device) if graphs == "step" else None
    steps, budget = config.epoch_steps(len(data.train_y)), config.total_steps(len(data.train_y))
    bar = tqdm(total=budget, initial=start * steps, desc=desc or attack.name,
               disable=True if quiet else None, unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start, config.epochs):
            torch.manual_seed(mix_seed(seeds[0], epoch, 2))
            cells.start_epoch(epoch)
            real = {seed: iter(()) if attack.data_free else
                    data.batches("train", batch_size=config.batch_size, device=device, seed=seed, epoch=epoch)
                    for seed in seeds}
            for step in range(min(steps, budget - epoch * steps)):  # a step budget may end the last epoch early
                labelled_batches = {seed: (None, None) if attack.data_free else next(real[seed]) for seed in seeds}
                batches = _student_batches(attack, teachers, cells.contexts, labelled_batches, step=step, epoch=epoch)
                labels = {seed: y for seed, (_, y) in labelled_batches.items()}
                if whole is None:
                    total = train_step(batches, labels)
                else:  # the teachers' forwards too are in the graph
                    total = whole(batches, labels, epoch=epoch, step=step)
                if step == 0 and not torch.isfinite(total.detach()):
                    raise Diverged(f"{attack.name}: the student loss became NaN/inf at epoch {epoch + 1}; "
                                   f"try a smaller `tau`")
                bar.update(1)
            cells.end_epoch()
            if save is not None and epoch + 1 < config.epochs:
                save(cells.states(epoch + 1))
    finally:
        bar.close()
    cells.report(notes=notes, images=images, image_count=image_count)
    return cells.accuracies(data)


def _way(attack: Attack, device: torch.device, *, ensemble: bool, graphs: bool | str | None) -> bool | str:
    """How :func:`run_cells` trains (``graphs`` checked, ``None`` decided by :func:`graphs_for`)."""
    if graphs not in (None, True, False, "step"):
        raise ValueError(f"graphs must be None, True, False or 'step', got {graphs!r}")
    if (ensemble or graphs) and not batchable(attack):
        raise NastyError(f"{attack.name} reads its students' features (it owns their forward); its students "
                         f"cannot be trained as {'an ensemble' if ensemble else 'CUDA graphs'}")
    if graphs is True and (ensemble or device.type != "cuda"):
        raise NastyError("CUDA graphs need a CUDA device, and students trained one by one (not as an ensemble)")
    if graphs is None:
        graphs = False if ensemble else graphs_for(attack, device)
    return graphs


@dataclass
class _Cells:
    """What :func:`run_cells` trains, on ``device``: per seed a bank of students per teacher
    (``banks[seed][source]``), the attack's context per ``(seed, source)``, per seed an optimizer
    and schedule (``opts``: each seed's checkpoint format); with an ensemble, per architecture one
    :class:`~attacks._ensemble.Ensemble` of every seed's and teacher's student (``groups``) and the
    one optimizer that trains their stacks. ``trained`` holds the optimizers that take the steps
    (``opts``, or ``{None: the ensembles'}``)."""

    attack: Attack
    teachers: dict
    students: list[str]
    device: torch.device
    banks: dict
    contexts: dict
    opts: dict
    groups: dict
    trained: dict

    @classmethod
    def build(cls, attack: Attack, teachers: dict, students: list[str], data: TensorData, *, config: TrainConfig,
              seeds: list[int], device, quiet: bool, ensemble: bool) -> "_Cells":
        for t in teachers.values():
            if t is not None:
                prepare(t, device).eval().requires_grad_(False)
        banks = {seed: prepare(nn.ModuleDict({src: make_students(students, data, seed=seed, attack=attack)
                                              for src in teachers}), device) for seed in seeds}
        contexts = {(seed, src): attack.setup(t, data, seed=seed, batch_size=config.batch_size, epochs=config.epochs,
                                              device=device, quiet=quiet, config=replace(config, seed=seed), source=src)
                    for seed in seeds for src, t in teachers.items()}
        opts = {seed: make_optimizer(banks[seed].parameters(), config) for seed in seeds}
        groups, trained = {}, opts
        if ensemble:
            members = [(seed, src) for seed in seeds for src in teachers]
            groups = {arch: Ensemble([banks[seed][src].students[i] for seed, src in members])
                      for i, arch in enumerate(students)}
            trained = {None: make_optimizer([p for e in groups.values() for p in e.parameters()], config)}
        return cls(attack, teachers, list(students), device, banks, contexts, opts, groups, trained)

    def start_epoch(self, epoch: int) -> None:
        for (seed, src), ctx in self.contexts.items():
            self.banks[seed].train()
            self.attack.start_epoch(ctx, epoch, self.banks[seed][src])

    def step(self, batches: dict, labels: dict, *, epoch: int, captured: set | None, cache: bool) -> torch.Tensor:
        """The teachers' logits, every student's forward, loss and backward, then the optimizers'
        steps; the summed loss. No host sync (it may be captured whole as a CUDA graph)."""
        batches = _teacher_logits(self.teachers, batches, self.device)
        for opt, _ in self.trained.values():
            opt.zero_grad(set_to_none=True)
        if self.groups:
            total = _ensemble_loss(self.attack, self.groups, batches, labels, self.contexts, epoch=epoch,
                                   device=self.device, cache=cache)
            total.backward()
        else:
            total = _backward_each(self.attack, batches, labels, self.banks, self.students, self.contexts,
                                   epoch=epoch, device=self.device, captured=captured, cache=cache)
        for opt, _ in self.trained.values():
            opt.step()
        return total

    def end_epoch(self) -> None:
        for _, sched in self.trained.values():
            sched.step()
        for e in self.groups.values():  # the members are the record: attacks, checkpoints and evaluation read them
            e.write_back()

    def states(self, epoch: int) -> dict[int, dict]:
        """Each seed's state after ``epoch`` epochs, in :func:`run_students`' format (the live tensors)."""
        if self.groups:  # the ensembles' momentum, back into each seed's optimizer (the checkpoint's format)
            momentum_to_members(list(self.groups.values()), self.trained[None][0],
                                [opt for opt, _ in self.opts.values()])
        return {seed: {"epoch": epoch, "students": self.banks[seed].state_dict(),
                       "optimizer": self.opts[seed][0].state_dict(),
                       "scheduler": self.trained[None if self.groups else seed][1].state_dict(),
                       "attack": {src: self.attack.state(self.contexts[(seed, src)]) for src in self.banks[seed]}}
                for seed in self.banks}

    def restore(self, resume: dict) -> int:
        """Load each seed's saved state (one epoch for all) into the students, optimizers and attack
        contexts, and into the ensembles' stacks where there are ensembles; return that epoch."""
        epochs = {int(state["epoch"]) for state in resume.values()}
        if len(epochs) != 1:
            raise ValueError(f"seeds trained together resume from one epoch, not {sorted(epochs)}")
        for seed, state in resume.items():
            self.banks[seed].load_state_dict(state["students"])
            self.opts[seed][0].load_state_dict(state["optimizer"])
            for src, ctx_state in state["attack"].items():
                self.attack.restore(self.contexts[(seed, src)], ctx_state)
        for key, (_, sched) in self.trained.items():
            sched.load_state_dict(resume[next(iter(resume)) if key is None else key]["scheduler"])
        for e in self.groups.values():
            e.read()
        if self.groups:
            momentum_from_members(list(self.groups.values()), [opt for opt, _ in self.opts.values()],
                                  self.trained[None][0])
        return epochs.pop()

    def report(self, *, notes: dict | None, images: dict | None, image_count: int) -> None:
        """Per seed and source, what the attack learned (``notes``) and images it synthesised."""
        for (seed, src), ctx in self.contexts.items():
            if notes is not None and (n := self.attack.notes(ctx)):
                notes.setdefault(seed, {})[src] = n
            if images is not None and (made := self.attack.synthesized(ctx, image_count)) is not None:
                images.setdefault(seed, {})[src] = made

    def accuracies(self, data: TensorData) -> dict[int, dict[tuple[str, str], float]]:
        return {seed: {(src, name): evaluate(student, data, device=self.device)["accuracy"]
                       for src in self.teachers for name, student in zip(self.students, bank[src].students)}
                for seed, bank in self.banks.items()}


def _backward_each(attack: Attack, batches: dict, labels: dict, banks: dict, students: list[str], contexts: dict, *,
                   epoch: int, device, captured: set | None, cache: bool = True) -> torch.Tensor:
    """Every student's forward, losses and backward, one student after another (one student's
    graph alive at a time); return the sum of their losses. ``captured`` (CUDA graphs): the
    students capture was tried on; a student not in it is captured on this batch first."""
    total = 0.0
    for (seed, src), (x, t) in batches.items():
        for arch, student in zip(students, banks[seed][src].students):
            with autocast(device, cache=cache):
                if captured is not None and id(student) not in captured:  # the first batch (after a resume too)
                    captured.add(id(student))
                    capture(student, x, name=arch)
                _, losses = attack.step(contexts[(seed, src)], student, x, t, labels[seed], epoch=epoch, arch=arch)
            loss = sum(losses.values())
            loss.backward()
            total = total + loss.detach()
    return total


def _ensemble_loss(attack: Attack, groups: dict, batches: dict, labels: dict, contexts: dict, *, epoch: int, device,
                   cache: bool = True):
    """The summed losses of every member of every ensemble: one vmapped forward per architecture
    (of one shared batch, or of each member's own), then :meth:`Attack.losses` per member, or, for
    a ``sample_mean`` attack, :meth:`Attack.loss` once on every member's batch joined."""
    xs = [x for x, _ in batches.values()]
    shared = all(x is xs[0] for x in xs)
    joined = attack.sample_mean and type(attack).losses is Attack.losses
    if joined:
        ts = [t for _, t in batches.values()]
        t_all = None if ts[0] is None else torch.cat(ts)
        y_all = None if labels[next(iter(labels))] is None else torch.cat([labels[seed] for seed, _ in batches])
    total = 0.0
    for arch, e in groups.items():
        with autocast(device, cache=cache):
            z = e(xs[0] if shared else xs).float()
        if joined:  # the sum over the M members of their batch means = M x the mean over all their samples
            total = total + len(batches) * attack.loss(z.flatten(0, 1), t_all, y_all)[0]
            continue
        for m, ((seed, src), (_, t)) in enumerate(batches.items()):
            total = total + sum(attack.losses(contexts[(seed, src)], z[m], t, labels[seed], epoch=epoch,
                                              arch=arch).values())
    return total


def _student_batches(attack: Attack, teachers: dict, contexts: dict, labelled_batches: dict, *, step: int,
                     epoch: int) -> dict:
    """Per ``(seed, source)``: what its students see and, where the attack brings them, the
    teacher's logits (``None`` where :func:`_teacher_logits` must run the teacher)."""
    return {(seed, src): attack.inputs(contexts[(seed, src)], x_real, y_real, step=step, epoch=epoch)
            for seed, (x_real, y_real) in labelled_batches.items() for src in teachers}


def _teacher_logits(teachers: dict, batches: dict, device) -> dict:
    """``batches`` with the teacher's logits where they are ``None``. Each teacher runs one forward
    for all the seeds' batches (joined); a batch that several sources see runs once. No host sync:
    it runs inside the whole step's CUDA graph (:class:`attacks._graphs.StepGraph`)."""
    out, pending = dict(batches), {}
    for (seed, src), (x, t) in batches.items():
        teacher = teachers[src]
        if t is None and teacher is not None:  # one forward per teacher module, if several sources share it
            pending.setdefault(id(teacher), (teacher, {}))[1].setdefault(id(x), []).append((seed, src))
    for teacher, by_batch in pending.values():
        xs = [batches[waiting[0]][0] for waiting in by_batch.values()]  # a batch that several sources see, once
        logits = frozen_logits(teacher, xs[0] if len(xs) == 1 else torch.cat(xs), device)
        for waiting, t in zip(by_batch.values(), logits.split([len(x) for x in xs])):
            for key in waiting:
                out[key] = (batches[key][0], t)
    return out
