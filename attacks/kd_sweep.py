"""KD with the temperature and weight chosen by the thief: it does not know the defender's tau,
so it tries each (tau, alpha) in ``taus`` x ``alphas`` and keeps the pair whose student is most
accurate on a stratified validation split of *its own* training data (``val_fraction`` of it,
seeded; the test set is never read for the choice). Each candidate trains for
``search_epochs`` on the rest, or longer where those epochs hold fewer than ``search_steps``
optimizer steps (a thief with few images: 5 epochs of 107 digits are 5 steps, after which every
candidate is still at chance and the search sees nothing), up to the full schedule's epochs;
all candidates train in one run, sharing the teacher's forwards. The chosen pair then
trains the student on all of the thief's data for the full schedule. Chosen per
teacher and per student architecture; ties go to the first pair in order. A low tau ignores most
of the misleading mass a nasty teacher puts on wrong classes.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nasty.defences import TopK
from nasty.errors import NastyError
from nasty.objectives import kd_loss

from .base import Attack, register


# the teacher's top-1 answer as logits, as a top-1 server releases it: every other class 1000 below
# the answered one, so the softened output is one-hot at any temperature a sweep tries (e^-62 at tau 16)
top1_answers = TopK(k=1)


@register
class KDSweep(Attack):
    name = "kd-sweep"
    added = {"search_steps": 0}  # a cell from before the setting searched for search_epochs alone
    top1 = False  # hard-label-sweep: distil the teacher's top-1 answers instead of its outputs

    def __init__(self, *, taus=(1.0, 2.0, 4.0, 8.0, 16.0), alphas=(0.5, 0.9), val_fraction: float = 0.2,
                 search_epochs: int = 5, search_steps: int = 80):
        try:
            self.taus, self.alphas = [float(t) for t in taus], [float(a) for a in alphas]
        except (TypeError, ValueError):  # e.g. one number from --attack-option kd-sweep.taus=4
            raise NastyError(f"{self.name}.taus and .alphas must be lists of numbers, "
                             f"got {taus!r} and {alphas!r}") from None
        if not self.taus or not self.alphas or min(self.taus) <= 0 or not all(0 <= a <= 1 for a in self.alphas):
            raise NastyError(f"{self.name} needs taus > 0 and alphas in [0, 1], got {self.taus} and {self.alphas}")
        if not 0.0 < val_fraction < 1.0:
            raise NastyError(f"{self.name}.val_fraction must be in (0, 1), got {val_fraction}")
        if int(search_epochs) != search_epochs or search_epochs < 1:
            raise NastyError(f"{self.name}.search_epochs must be a whole number >= 1, got {search_epochs}")
        if int(search_steps) != search_steps or search_steps < 0:
            raise NastyError(f"{self.name}.search_steps must be a whole number >= 0, got {search_steps}")
        self.val_fraction, self.search_epochs, self.search_steps = val_fraction, int(search_epochs), int(search_steps)

    def search_schedule(self, train_size: int, config) -> int:
        """The epochs each candidate trains: ``search_epochs``, more if those hold fewer than
        ``search_steps`` steps of ``train_size`` images (but not more than the full schedule's)."""
        steps = max(1, train_size // config.batch_size)  # an epoch's steps, as run_cells counts them
        return max(self.search_epochs, min(config.epochs, -(-self.search_steps // steps)))

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        if config is None:
            raise NastyError(f"{self.name} runs inside run_students (it needs the training config)")
        return {"teacher": teacher, "data": data, "config": config, "device": device, "picks": None}

    def start_epoch(self, ctx, epoch, students):
        if ctx["picks"] is None:  # at the first epoch (a resumed run has them from its state)
            ctx["picks"] = self.select(ctx["teacher"], ctx["data"], archs=students.names, config=ctx["config"],
                                       device=ctx["device"])

    def select(self, teacher, data, *, archs, config, device) -> dict[str, dict]:
        """Per architecture: the chosen ``tau`` and ``alpha`` and every candidate's validation accuracy.
        The candidates train in one run (:func:`attacks.base.run_cells`): one teacher forward per
        batch for all of them, and on a GPU their whole training step replayed as one CUDA graph."""
        from .base import run_cells

        split = data.split_validation(self.val_fraction, seed=config.seed % 2**32)[1]  # the thief's own images
        pairs = {f"candidate{i}": pair for i, pair in enumerate((t, a) for t in self.taus for a in self.alphas)}
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the outer run's random streams are left as they were
            acc = run_cells(_Candidates(pairs, answers=self.answers), dict.fromkeys(pairs, teacher), list(archs), split,
                            config=replace(config, epochs=self.search_schedule(len(split.train_y), config)),
                            seeds=[config.seed],
                            device=device)[config.seed]
        tried = {arch: [{"tau": tau, "alpha": alpha, "val_accuracy": round(acc[(name, arch)], 4)}
                        for name, (tau, alpha) in pairs.items()] for arch in archs}
        return {arch: {**max(rows, key=lambda r: r["val_accuracy"]), "tried": rows} for arch, rows in tried.items()}

    def state(self, ctx):
        return {"picks": ctx["picks"]}

    def restore(self, ctx, state):
        ctx["picks"] = state["picks"]

    def notes(self, ctx) -> dict:
        return {"picks": ctx["picks"]}

    def losses(self, ctx, student_logits, teacher_logits, y, *, epoch, arch):
        pick = ctx["picks"][arch]
        return {"loss": kd_loss(student_logits, self.answers(teacher_logits), y, alpha=pick["alpha"],
                                tau=pick["tau"])[0]}

    def answers(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """What the thief distils: the teacher's outputs, or with ``top1`` its top-1 answers alone."""
        return top1_answers(teacher_logits) if self.top1 else teacher_logits


@register
class HardLabelSweep(KDSweep):
    """kd-sweep on the teacher's top-1 answers alone (a label-only API, or a thief who distrusts
    the soft outputs): the same search over tau and alpha, each candidate distilling a one-hot
    answer. KD at a high temperature on one-hot targets is cross-entropy on the logits / tau,
    scaled by tau^2: a training recipe, not dark knowledge, and one that can beat the plain
    cross-entropy of ``hard-label`` and ``scratch`` by points where steps are few. Its students
    are the same from any two teachers with the same top-1 answers, so its immunity is 0 by
    construction: its row says what labels alone, well used, give a thief."""

    name = "hard-label-sweep"
    added = {}
    top1 = True
    labels_only = True


class _Candidates(Attack):
    """The search's students: KD from one teacher, each source (``candidate<i>``) with its own
    ``(tau, alpha)``. Not registered: only :meth:`KDSweep.select` trains it."""

    name = "kd-sweep search"

    def __init__(self, pairs: dict[str, tuple[float, float]], *, answers):
        self.pairs, self.answers = pairs, answers  # answers: the sweep's (outputs or top-1 answers)

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        return self.pairs[source]

    def losses(self, ctx, student_logits, teacher_logits, y, *, epoch, arch):
        tau, alpha = ctx
        return {"loss": kd_loss(student_logits, self.answers(teacher_logits), y, alpha=alpha, tau=tau)[0]}
