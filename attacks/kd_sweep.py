"""KD with the temperature and weight chosen by the thief: it does not know the defender's tau,
so it tries each (tau, alpha) in ``taus`` x ``alphas`` and keeps the pair whose student is most
accurate on a stratified validation split of *its own* training data (``val_fraction`` of it,
seeded; the test set is never read for the choice). Each candidate trains for
``search_epochs`` on the rest, or longer where those epochs hold fewer than ``search_steps``
optimizer steps (a thief with few images: 5 epochs of 107 digits are 5 steps, after which every
candidate is still at chance and the search sees nothing), up to as many steps as the final run
takes (``match_steps``: with 10% of digits, 40 steps, where capping at the schedule's epochs gave
20 and scored the candidates far from where the final run ends);
all candidates train in one run, sharing the teacher's forwards. A thief with few images scores
on several random splits (up to 5, until their validation parts hold ``val_images`` in all) and
keeps the pair with the best mean: one split of 27 images (10% of digits) picks by noise. The
chosen pair then trains the student on all of the thief's data for the full schedule. Chosen per
teacher and per student architecture; ties go to the first pair in order. A low tau ignores most
of the misleading mass a nasty teacher puts on wrong classes.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nasty.data import mix_seed
from nasty.defences import TopK
from nasty.errors import Diverged, NastyError
from nasty.objectives import kd_loss

from .base import Attack, register


# the teacher's top-1 answer as logits, as a top-1 server releases it: every other class 1000 below
# the answered one, so the softened output is one-hot at any temperature a sweep tries (e^-62 at tau 16)
top1_answers = TopK(k=1)


@register
class KDSweep(Attack):
    name = "kd-sweep"
    cost = 2.5  # its candidates on a split, then the final run (2.3-2.5x a KD cell on digit pairs, 5x on digits)
    # cells from before a setting: the search ran search_epochs alone, on one split
    added = {"search_steps": 0, "val_images": 0, "match_steps": False}
    max_splits = 5
    top1 = False  # hard-label-sweep: distil the teacher's top-1 answers instead of its outputs

    def __init__(self, *, taus=(1.0, 2.0, 4.0, 8.0, 16.0), alphas=(0.5, 0.9), val_fraction: float = 0.2,
                 search_epochs: int = 5, search_steps: int = 80, val_images: int = 200, match_steps: bool = True):
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
        if int(val_images) != val_images or val_images < 0:
            raise NastyError(f"{self.name}.val_images must be a whole number >= 0, got {val_images}")
        self.val_fraction, self.search_epochs, self.search_steps = val_fraction, int(search_epochs), int(search_steps)
        if match_steps not in (0, 1):  # True, False, or 1 and 0 from --attack-option
            raise NastyError(f"{self.name}.match_steps must be 1 or 0 (true or false), got {match_steps!r}")
        self.val_images, self.match_steps = int(val_images), bool(match_steps)

    def splits(self, val_size: int) -> int:
        """How many random splits the search scores on: enough for ``val_images`` validation images
        in all, at most ``max_splits``; one where a split holds that many (or ``val_images`` is 0)."""
        return max(1, min(self.max_splits, -(-self.val_images // max(1, val_size))))

    def search_schedule(self, train_size: int, config, full_size: int | None = None) -> int:
        """The epochs each candidate trains: ``search_epochs``, more if those hold fewer than
        ``search_steps`` steps of ``train_size`` images, up to as many steps as the full schedule
        takes on ``full_size`` images (the thief's whole share; default ``train_size``), so that
        candidates are scored where the final run ends; with ``match_steps`` off, up to the full
        schedule's epochs (fewer steps, on the smaller split)."""
        steps = config.epoch_steps(train_size)  # an epoch's steps, as run_cells counts them
        cap = config.epochs
        if self.match_steps:
            cap = -(-config.total_steps(full_size or train_size) // steps)
        return max(self.search_epochs, min(cap, -(-self.search_steps // steps)))

    def setup(self, teacher, data, *, seed, batch_size, epochs, device, quiet=True, config=None, source=""):
        if config is None:
            raise NastyError(f"{self.name} runs inside run_students (it needs the training config)")
        return {"teacher": teacher, "data": data, "config": config, "device": device, "picks": None}

    def start_epoch(self, ctx, epoch, students):
        if ctx["picks"] is None:  # at the first epoch (a resumed run has them from its state)
            ctx["picks"] = self.select(ctx["teacher"], ctx["data"], archs=students.names, config=ctx["config"],
                                       device=ctx["device"])

    def select(self, teacher, data, *, archs, config, device) -> dict[str, dict]:
        """Per architecture: the chosen ``tau`` and ``alpha`` and every candidate's validation accuracy
        (the mean over :meth:`splits` random splits of the thief's own images; ``splits`` says how many).
        The candidates of a split train in one run (:func:`attacks.base.run_cells`): one teacher forward
        per batch for all of them, and on a GPU their whole training step replayed as one CUDA graph."""
        pairs = {f"candidate{i}": pair for i, pair in enumerate((t, a) for t in self.taus for a in self.alphas)}
        devices = [device] if torch.device(device).type == "cuda" else []
        first = data.split_validation(self.val_fraction, seed=config.seed % 2**32)[1]  # the thief's own images
        count = self.splits(len(first.test_y))
        scores = []
        for k in range(count):
            split = first if k == 0 else data.split_validation(self.val_fraction,
                                                               seed=mix_seed(config.seed, 37, k) % 2**32)[1]
            cfg = replace(config, steps=None, epochs=self.search_schedule(len(split.train_y), config,
                                                                          len(data.train_y)))
            with torch.random.fork_rng(devices=devices):  # the outer run's random streams are left as they were
                scores.append(_scores(pairs, teacher, list(archs), split, answers=self.answers, config=cfg,
                                      device=device))
        tried = {arch: [{"tau": tau, "alpha": alpha, **_mean([acc[(name, arch)] for acc in scores])}
                        for name, (tau, alpha) in pairs.items()] for arch in archs}
        for arch, rows in tried.items():
            if all(r.get("diverged") for r in rows):
                raise Diverged(f"{self.name}: every candidate (tau, alpha) diverged for student {arch} "
                               f"(the student loss became NaN/inf)")
        return {arch: {**max((r for r in rows if not r.get("diverged")), key=lambda r: r["val_accuracy"]),
                       "splits": count, "tried": rows} for arch, rows in tried.items()}

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
    added = {"val_images": 0, "match_steps": False}  # cells from before the settings
    top1 = True
    labels_only = True


def _mean(accs: list) -> dict:
    """A candidate's score over the splits; a candidate that diverged on any split is a failed one."""
    if any(a is None for a in accs):
        return {"val_accuracy": None, "diverged": True}
    return {"val_accuracy": round(sum(accs) / len(accs), 4)}


def _scores(pairs: dict, teacher, archs: list[str], split, *, answers, config, device) -> dict:
    """Every candidate's validation accuracy per ``(candidate, arch)``, all trained in one run; where
    that run diverges, each candidate and architecture again alone, ``None`` for those that diverge
    (a failed candidate: the others are scored as they would be)."""
    from .base import run_cells

    run = lambda chosen, students: run_cells(  # noqa: E731
        _Candidates(chosen, answers=answers), dict.fromkeys(chosen, teacher), students, split, seeds=[config.seed],
        device=device, config=config)[config.seed]
    try:
        return run(pairs, archs)
    except Diverged:
        out = {}
        for name, pair in pairs.items():
            for arch in archs:
                try:
                    out[(name, arch)] = run({name: pair}, [arch])[(name, arch)]
                except Diverged:
                    out[(name, arch)] = None
        return out


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
