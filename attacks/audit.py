"""The KD-immunity audit: attack the normal and the nasty teacher the same way, compare students.

    from attacks.audit import audit
    report = audit(teacher="runs/nasty", reference="runs/normal", out="runs/audit")

The grid is cells of (attack, seed), plus one ``scratch`` and one ``label-smoothing`` cell per
seed (students trained on the real labels, plain and smoothed: the baselines every attack is
compared with). A cell trains every student
architecture against both teachers in one loop (one teacher forward per batch per teacher)
and is written to ``out/cells/`` as soon as it finishes; running the same audit again skips
the cells that are done. Accuracies are final-epoch test accuracies in percent (never the best
epoch). ``report.json`` and ``report.md`` are rewritten after every cell. Per student, the
``worst_case`` is the attack that gets most from the nasty teacher; it heads every report. A
data-free cell (DAFL, DeepInversion) also keeps a few of the images it synthesised from each
teacher (``cells/<cell>.images.safetensors``): ``report.html`` shows those, and trains nothing again.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from nasty import accel
from nasty import checkpoint as ckpt
from nasty.data import TensorData
from nasty.errors import Diverged, NastyError, NastyWarning
from nasty.models import create_model
from nasty.recipes import RECIPES, recipe_for
from nasty.released import Brought, is_adversary, label, open_models
from nasty.trainer import TrainConfig, evaluate, resolve_device
from nasty.utility import utility

from . import DEFAULT_ATTACKS, IMAGE_TITLES, attack_names, attack_settings, create_attack, progress, scale
from ._cells import (IMAGES_PER_CLASS, _cells_dir, _images_path, _load_cell, _load_images, _load_partial,
                     _partial_saver, _reference_cell, _reference_cells, _save_images)
from .base import batchable, run_cells
# the summary and the reports, importable from here as they always were
from .render import (TABLE_HEADER, WORST_HEADER, _write_html, chosen, format_html, format_markdown, format_table,
                     read_report, schedule_text, write_report)
from .summary import (BASELINES, REFERENCE, SIDE_NAMES, SOURCES, TEACHER, AuditFacts, Side, beyond_labels,
                      build_report, summarize, worst_case)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["audit", "summarize", "worst_case", "beyond_labels", "format_table", "format_markdown", "format_html",
           "schedule_text", "chosen", "read_report", "student_schedule", "default_tau", "BASELINES", "SOURCES",
           "TABLE_HEADER", "WORST_HEADER"]


def default_tau(num_classes: int, dataset: str = "imagefolder") -> float:
    """The KD attack's temperature: the dataset recipe's (the paper's for CIFAR), and for a user's
    image folder the paper's rule, 4, and 20 for 100 classes or more (:func:`nasty.recipes.recipe_for`;
    digit pairs have 100 classes and tau 4: at 1,860 steps KD at tau 4 and 16 reached 92.45 and 89.72,
    bench/digit_pairs_value.py)."""
    return recipe_for(dataset if dataset in RECIPES else "imagefolder", num_classes).tau


def audit(*, teacher, reference, attacks=DEFAULT_ATTACKS, students=None, seeds=(0, 1, 2), epochs: int | None = None,
          student_steps: int | None = None, alpha: float = 0.9, tau: float | None = None, device="auto", out="runs/audit", force: bool = False,
          quiet: bool = False, attack_options: dict | None = None, plots: bool = True,
          checkpoint_seconds: float = 60.0, ensemble: bool | None = None, reference_from=None, devices=None,
          **brought: Unpack[Brought]) -> dict:
    """Run the grid and write ``report.json`` / ``report.md`` to ``out``; return the report dict.

    ``attacks`` are names of :data:`attacks.ATTACKS` (``"all"``: every one).
    Every student (the baselines and every thief) trains ``student_steps`` optimizer steps, whatever
    the thief's share of the data: by default the steps of ``epochs`` (the recipe's) over the whole
    training set, so a thief with a tenth of the images trains ten times the epochs and the share
    measures data, not under-training (:func:`student_schedule`).
    ``teacher`` is the audited (nasty) model, ``reference`` the normal one it was hardened against.
    ``attack_options`` maps an attack name to constructor arguments (e.g. ``{"deepinversion": {"pool_size":
    2048}}``), over the dataset recipe's (:data:`nasty.recipes.RECIPES`). With ``plots``, ``report.html`` (one
    self-contained file) and the PNGs beside it show logit peaks, t-SNE and synthesised images.
    A cell in training saves its state to ``cells/<cell>.partial.pt`` at an epoch's end once
    ``checkpoint_seconds`` have passed (0: every epoch); the same audit run again goes on from there.

    ``teacher`` and ``reference`` may be run directories, weights files or ``nn.Module`` objects;
    ``brought`` says what they do not record and where the data is (:class:`nasty.released.Brought`:
    ``arch``, ``dataset`` or ``data``, ``mean``/``std`` or ``normalization``, ``inputs``, ...); its
    ``train_fraction`` is the thief's share of the training set. A warning (not an error) says when
    the reference is not the adversary the teacher's card records, or is itself hardened.

    ``ensemble``: ``True`` trains an attack's students of one architecture, every seed and both teachers,
    as one batched ensemble (:func:`attacks.base.run_cells`); ``None``: on a GPU an attack's seeds train
    together as one CUDA graph, on the CPU each cell alone; ``False``: each cell alone (docs/speed.md).

    ``reference_from``: another audit's ``out`` against the same reference; its finished cells of these
    settings give the reference's students (the cell records ``reference_from``). An audit of a model
    against itself trains one side and records it as both (``mirrored``).

    ``devices`` (``"cuda:0,cuda:1"``, a list, or ``"cpu,cpu"``): one worker process per device trains
    cells, then this one writes the report; under ``torchrun`` each rank trains and rank 0 writes.
    Either way the numbers are those of one process (:mod:`attacks.scale`).
    """
    given = {k: v for k, v in locals().items() if k != "brought"}  # for the workers of ``devices``
    attacks, seeds, attack_options = _check_settings(attacks, attack_options=attack_options, alpha=alpha, tau=tau,
                                                     seeds=seeds, checkpoint_seconds=checkpoint_seconds,
                                                     students=students, epochs=epochs)
    progress.check_out(out, force=force)
    if devices is not None:  # one worker per device shares out the cells; then this process writes the report
        return scale.spread(audit, {**given, **brought}, devices=devices)
    reference_cells = _reference_cells(reference_from)
    models, cards, data = _teachers(teacher, reference, **brought)
    grid = _prepare(models, cards, data, attacks=attacks, attack_options=attack_options, students=students,
                    epochs=epochs, student_steps=student_steps, alpha=alpha, tau=tau, device=device, quiet=quiet,
                    checkpoint_seconds=checkpoint_seconds, train_fraction=brought.get("train_fraction", 1.0))
    out = Path(out).expanduser()
    cells_dir = _cells_dir(out)
    todo = _plan(attacks, seeds, grid.opts, common=grid.common, cells_dir=cells_dir, force=force,
                 reference_cells=reference_cells)
    report, trained = _run_grid(todo, grid, out=out, ensemble=ensemble, force=force)
    if not scale.writes():  # a worker of several: the writer makes the report's figures
        return report
    if plots and (trained or not (out / "report.html").exists()):
        _write_figures(report, out, grid, cells_dir=cells_dir, seed=seeds[0])
    progress.raise_if_failed(report, out)
    return report


@dataclass(frozen=True, kw_only=True)
class _Training:
    """How every cell of an audit trains: the teachers by side, the students, the thief's data and
    the schedule they all follow, and where and how (progress bars, partial saves)."""

    models: dict
    students: list[str]
    data: TensorData
    schedule: TrainConfig
    device: object
    quiet: bool
    checkpoint_seconds: float


@dataclass(frozen=True, kw_only=True)
class _Grid:
    """An audit ready to run: how its cells train, each attack's options, what every cell's key
    holds (``common``), and what the report records besides the cells (``facts``)."""

    training: _Training
    opts: dict
    common: dict
    facts: AuditFacts


def _prepare(models: dict, cards: dict, data: TensorData, *, attacks: list[str], attack_options: dict, students,
             epochs, student_steps, alpha: float, tau, device, quiet: bool, checkpoint_seconds: float,
             train_fraction: float) -> _Grid:
    """The settings of every cell, checked against the teachers, students and data (before any
    training), and both teachers measured as served: test accuracy and utility."""
    recipe = recipe_for(data.name, data.num_classes)
    students = list(dict.fromkeys(students or recipe.students))  # each architecture once
    tau = default_tau(data.num_classes, data.name) if tau is None else tau
    epochs = epochs or recipe.epochs
    schedule = student_schedule(data, epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, steps=student_steps)
    # one precedence, lowest first: the attack's defaults, the dataset recipe, the audit-level --alpha/--tau,
    # the user's --attack-option for that attack (``create_attack`` drops what an attack does not take)
    opts = {a: {**recipe.attack_options.get(a, {}), "alpha": alpha, "tau": tau, **(attack_options or {}).get(a, {})}
            for a in attacks}
    _preflight(attacks, opts, data=data, models=models, students=students, epochs=schedule.epochs)
    dev = scale.device(resolve_device(device))
    accuracy = {k: evaluate(m.to(dev), data, device=dev)["accuracy"] for k, m in models.items()}
    served = {k: utility(m, data, device=dev) for k, m in models.items()}  # what an honest user gets (served)
    common = {"dataset": data.name, "train_fraction": train_fraction, "students": students, "epochs": epochs,
              "batch_size": recipe.batch_size, "lr": recipe.lr, **data.flip_choice(),
              # a step budget other than the share's own epochs (cells from before it trained epochs * an epoch's steps)
              **({"steps": schedule.steps} if schedule.steps != epochs * schedule.epoch_steps(len(data.train_y)) else {}),
              "teachers": {src: cards[src].get("sha256") for src in SOURCES},
              # what each teacher answers through: a served top-1 has its source's weights (and sha256)
              "served": {src: cards[src].get("output_transform") or None for src in SOURCES}}
    sides = {src: Side(card=cards[src], accuracy=accuracy[src], sha256=common["teachers"][src], utility=served.get(src))
             for src in SOURCES}
    facts = AuditFacts(dataset=data.name, attacks=attacks, reference=sides[REFERENCE], teacher=sides[TEACHER],
                       train_fraction=train_fraction, epochs=epochs, schedule=schedule, samples=len(data.train_y),
                       alpha=alpha, tau=tau)
    training = _Training(models=models, students=students, data=data, schedule=schedule, device=dev, quiet=quiet,
                         checkpoint_seconds=checkpoint_seconds)
    return _Grid(training=training, opts=opts, common=common, facts=facts)


def _run_grid(todo: list[_Cell], grid: _Grid, *, out: Path, ensemble: bool | None,
              force: bool = False) -> tuple[dict, bool]:
    """Train what ``todo`` has not finished, cell by cell (or a group of seeds at once), rewriting the
    report after each; return the last report and whether anything was trained."""
    cells, trained, report = [], False, None
    finished = {}  # cells trained by this run, by path (a group of seeds finishes several at once)
    training = grid.training

    def train_group(group: list[_Cell]) -> dict:
        try:
            return _train_cells(group, training, ensemble=bool(ensemble) and batchable(group[0].attack))
        except Diverged as e:  # one thief that failed: recorded in the report, the others go on
            return progress.failed_cells(group, e)

    def group_at(cells: list[_Cell], i: int) -> list[_Cell]:
        return _group(cells, i, ensemble=ensemble, device=training.device)

    share = scale.current()  # several processes: each trains what no other holds, then all are done
    if share is not None:
        trained = any(c.done is None for c in todo)
        todo = share.run(todo, group=group_at, train=train_group, refresh=lambda c: _refresh(c, force=force))
    for i, c in enumerate(todo):
        if c.done is None and c.path not in finished:
            finished.update(train_group(group_at(todo, i)))
            trained = True
        cells.append(c.done or finished[c.path])
        report = progress.annotate(build_report(cells, grid.facts), cells, len(todo))
        if scale.writes():
            write_report(out, report)
    return report, trained


def _refresh(c: _Cell, *, force: bool) -> _Cell:
    """``c`` as its files say now (another process may have finished it, or saved its state, since the plan)."""
    done = _load_cell(c.path, c.key, force=force)
    if done is not None:
        return c._replace(done=done, resume=None)
    return c._replace(resume=_load_partial(c.partial, c.key, force=force))


def _write_figures(report: dict, out: Path, grid: _Grid, *, cells_dir: Path, seed: int) -> None:
    """report.html and its figures, with the images the data-free cells of ``seed`` saved."""
    grids = {}  # the first seed's images of each data-free attack, as its cell saved them
    for a in grid.facts.attacks:
        saved = _load_images(_images_path(cells_dir / f"{a}-seed{seed}.json"))
        for src in (s for s in SOURCES if s in saved):
            grids[f"{IMAGE_TITLES.get(a, a)}, from the {SIDE_NAMES[src]}"] = saved[src]
    training = grid.training
    _write_html(report, out, training.models, training.data, tau=grid.facts.tau, grids=grids, quiet=training.quiet)


MAX_STUDENT_STEPS = 10_000_000


def student_schedule(data: TensorData, *, epochs: int, batch_size: int, lr: float,
                     steps: int | None = None) -> TrainConfig:
    """The schedule of every student of an audit: ``steps`` optimizer steps on the thief's images
    (``data``, its share of the training set); ``None``: the steps of ``epochs`` over the whole
    training set. The epochs are as many as those steps take on the thief's images, the last one
    cut short; the LR drops at the same fractions of them (:meth:`TrainConfig.for_steps`)."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    if steps is None:
        full = data.full_size or round(len(data.train_y) / data.train_fraction)  # the set the share was drawn from
        steps = epochs * config.epoch_steps(full)
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= MAX_STUDENT_STEPS:
        raise NastyError(f"`student_steps` must be a whole number from 1 to {MAX_STUDENT_STEPS:,}, got {steps}")
    return config.for_steps(int(steps), len(data.train_y))


def _check_settings(attacks, *, attack_options, alpha, tau, seeds, checkpoint_seconds, students=None,
                    epochs=None) -> tuple[list[str], list[int], dict]:
    """The attack names, seeds and attack options (as :func:`attacks.options.check_options` makes
    them), once every audit-level setting and count is known to be valid (before anything is loaded)."""
    from .options import check_counts, check_options

    attacks = attack_names(attacks)
    checked = {}
    for name, options in (attack_options or {}).items():
        known = attack_settings(name, option="`attack_options`")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise NastyError(f"`attack_options`: {name} has no setting {unknown[0]!r}; "
                             f"it has {', '.join(known) or 'none'}")
        checked[name] = check_options(name, options, option="`attack_options`")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise NastyError(f"`alpha` must be in [0, 1], got {alpha}")
    if tau is not None and not (isinstance(tau, (int, float)) and 0 < tau < float("inf")):
        raise NastyError(f"`tau` must be a finite number > 0, got {tau}")
    check_counts(seeds=len(seeds) if hasattr(seeds, "__len__") else None, students=len(students or ()),
                 epochs=epochs)
    seeds = list(seeds)
    if not seeds:
        raise NastyError("`seeds`: give at least one seed")
    if checkpoint_seconds < 0:
        raise NastyError(f"`checkpoint_seconds` must be >= 0, got {checkpoint_seconds}")
    return attacks, seeds, checked


def _teachers(teacher, reference, **brought: Unpack[Brought]) -> tuple[dict, dict, TensorData]:
    """The two teachers (``normal``: the reference, ``nasty``: the audited one) as models and
    cards, and the data they were trained on; whatever does not fit fails here, named."""
    def same_dataset(items):
        teacher_on, reference_on = (card.get("dataset") for _, _, card in items)
        if None not in (teacher_on, reference_on) and teacher_on != reference_on:
            raise NastyError(f"`reference` {label(reference)} was trained on {reference_on}, but `teacher` "
                             f"{label(teacher)} on {teacher_on}; audit a teacher against its own normal model")
        _warn_about_reference(items[0][2], items[1][2], reference)

    (audited, released), data = open_models({"teacher": teacher, "reference": reference}, served=True,
                                        check=same_dataset, **brought)
    return ({REFERENCE: released.model, TEACHER: audited.model}, {REFERENCE: released.card, TEACHER: audited.card},
            data)


def _preflight(attacks: list[str], opts: dict, *, data, models: dict, students: list[str], epochs: int) -> None:
    """An architecture, or an attack that cannot run on these teachers, students or epochs, fails now, not hours in."""
    for s in students:
        create_model(s, num_classes=data.num_classes, in_chans=data.input_shape[0])
    for name in attacks:
        attack = create_attack(name, **opts[name])
        attack.check_data(data)
        attack.check_epochs(epochs)
        for model in models.values():
            attack.check(model)
        for s in students:
            attack.student(create_model(s, num_classes=data.num_classes, in_chans=data.input_shape[0]), data)


def _plan(attacks: list[str], seeds: list[int], opts: dict, *, common: dict, cells_dir: Path, force: bool,
          reference_cells: Path | None = None):
    """Every cell of the grid, the baselines first, with what ``cells_dir`` holds of it (and what
    ``reference_cells`` holds of its reference side). Every finished cell is read (and a foreign
    one refused) before anything is written."""
    todo = []
    teachers, served = common["teachers"], common["served"]
    itself = (teachers[TEACHER] is not None and teachers[TEACHER] == teachers[REFERENCE]
              and served[TEACHER] == served[REFERENCE])
    for name, seed in [(b, seed) for b in BASELINES for seed in seeds] + [(a, seed) for a in attacks for seed in seeds]:
        attack = BASELINES[name]() if name in BASELINES else create_attack(name, **opts[name])
        key = {**common, "attack": name, "settings": attack.settings(), "seed": seed}
        if name in BASELINES:  # no teacher in them: the same cells serve any audit of these students (compare)
            del key["teachers"], key["served"]
        path = cells_dir / f"{name}-seed{seed}.json"
        partials = [path.with_name(f"{name}-seed{seed}.{kind}pt") for kind in ("partial.", "audited.partial.")]
        cell = _load_cell(path, key, force=force)
        if cell is not None:
            for partial in partials:  # left by a run killed between writing the cell and removing it
                partial.unlink(missing_ok=True)
            todo.append(_Cell(name, seed, attack, key, path, cell, partials[0], None))
            continue
        resume = _load_partial(partials[0], key, force=force)  # both sides in training: go on with both
        reference = None
        if resume is None and name not in BASELINES and reference_cells is not None:
            reference = _reference_cell(reference_cells / path.name, key, students=common["students"])
        mirror = resume is None and name not in BASELINES and reference is None and itself
        if reference is not None or mirror:  # the audited side alone, saved apart from a state of both sides
            resume = _load_partial(partials[1], key, force=force)
        todo.append(_Cell(name, seed, attack, key, path, None, partials[1 if reference or mirror else 0], resume,
                          reference, mirror))
    return todo


def _warn_about_reference(teacher_card: dict, reference_card: dict, reference) -> None:
    """One line on stderr (a warning, not an error) when the comparison is not the one the audit is for."""
    if reference_card.get("kind") == "nasty":
        warnings.warn(NastyWarning(f"`reference` {label(reference)} is itself a hardened (nasty) teacher; the audit "
                                   f"measures immunity against the normal model the teacher was hardened from"))
    elif is_adversary(teacher_card, reference_card) is False:
        adv = teacher_card["adversary"]
        warnings.warn(NastyWarning(f"`reference` {label(reference)} is not the adversary the teacher was hardened "
                                   f"against ({adv.get('source')}, sha256 {str(adv.get('sha256'))[:12]}...); "
                                   f"immunity is measured against another model"))


class _Cell(NamedTuple):
    """One cell of the audit's plan: ``done`` if a finished cell was read, ``resume`` its partial state."""

    name: str
    seed: int
    attack: object
    key: dict
    path: Path
    done: dict | None
    partial: Path
    resume: dict | None
    reference: tuple[Path, dict] | None = None  # another audit's cell whose reference side this one takes
    mirror: bool = False  # the reference is the audited teacher (same weights, same answers): one side is trained

    @property
    def resume_epoch(self) -> int:
        return int(self.resume["epoch"]) if self.resume else 0

    @property
    def one_side(self) -> bool:
        """Only the audited teacher's students are trained; the reference side comes from elsewhere."""
        return self.reference is not None or self.mirror


def _group(todo: list[_Cell], i: int, *, ensemble: bool | None, device) -> list[_Cell]:
    """The unfinished cells trained together with ``todo[i]``: every seed of its attack that resumes
    from the same epoch, where the attack keeps the default step and it pays (as an ensemble, or
    by default on a GPU, where the seeds' batches share each teacher forward); else ``todo[i]``."""
    first = todo[i]
    same = [c for c in todo[i:] if c.name == first.name and c.done is None and c.resume_epoch == first.resume_epoch
            and (c.reference is None, c.mirror) == (first.reference is None, first.mirror)]
    together = batchable(first.attack) and (ensemble if ensemble is not None else accel.enabled(device))
    return same if together else [first]


def _train_cells(group: list[_Cell], training: _Training, *, ensemble: bool) -> dict:
    """Train the cells of ``group`` (one attack, one or more seeds) in one :func:`run_cells`; write
    each cell (and a data-free cell's images) as it is finished; return them by path."""
    models, students, data, device = training.models, training.students, training.data, training.device
    name, attack = group[0].name, group[0].attack
    seeds = [c.seed for c in group]
    resumes = {c.seed: c.resume for c in group if c.resume}
    t0 = time.perf_counter() - sum(r["seconds"] for r in resumes.values())
    one_side = group[0].one_side  # the reference's students come from another audit's cells, or are the audited's
    teachers = {name: None} if name in BASELINES else {TEACHER: models[TEACHER]} if one_side else models
    cfg = replace(training.schedule, seed=seeds[0])
    notes, made = {}, {}  # made: what a data-free attack synthesised, kept for report.html
    acc = run_cells(attack, teachers, students, data, config=cfg, seeds=seeds, device=device, quiet=training.quiet,
                    desc=f"{name} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}",
                    resume=resumes or None, notes=notes, images=made,
                    save=_partial_saver({c.seed: (c.partial, c.key) for c in group}, t0=t0,
                                        every=training.checkpoint_seconds),
                    image_count=IMAGES_PER_CLASS * data.num_classes, ensemble=ensemble)
    seconds = (time.perf_counter() - t0) / len(seeds)
    written = {}
    for c in group:
        runs = [{"attack": name, "student": s, "source": src, "seed": c.seed, "accuracy": round(a, 4)}
                for (src, s), a in acc[c.seed].items()]
        if c.reference is not None:
            _take_reference_side(c, runs=runs, notes=notes.setdefault(c.seed, {}), made=made.setdefault(c.seed, {}))
        elif c.mirror:
            _mirror_side(runs=runs, notes=notes.setdefault(c.seed, {}), made=made.setdefault(c.seed, {}))
        if made.get(c.seed):  # before the cell: a finished cell always has its images
            _save_images(_images_path(c.path), made[c.seed])
        cell = {"key": c.key, "seconds": round(seconds, 2), "runs": runs,
                "schedule": {"steps": cfg.total_steps(len(data.train_y)), "epochs": cfg.epochs,
                             "samples": 0 if attack.data_free else len(data.train_y)}}
        if notes.get(c.seed):
            cell["notes"] = notes[c.seed]
        if c.reference is not None:
            cell["reference_from"] = str(c.reference[0])
        elif c.mirror:
            cell["mirrored"] = True  # the reference side is the audited side, trained once
        if c.resume:
            cell["resumed_from_epoch"] = c.resume_epoch
        if len(seeds) > 1:
            cell["trained_with_seeds"] = seeds  # in one run: the cell's seconds are its share of theirs
        ckpt.write_json(c.path, cell)
        c.partial.unlink(missing_ok=True)
        written[c.path] = cell
        if not training.quiet:
            from tqdm.auto import tqdm

            tqdm.write(f"{name} seed {c.seed} ({cell['seconds']:.1f}s): " + ", ".join(
                f"{r['student']}<-{r['source']} {r['accuracy']:.2f}" for r in cell["runs"]))
    return written


def _take_reference_side(c: _Cell, *, runs: list, notes: dict, made: dict) -> None:
    """Put the reference side of ``c.reference`` (its runs first, as a cell of both sides has
    them, its notes and its synthesised images) into what the cell ``c`` will record."""
    path, cell = c.reference
    runs[:0] = [r for r in cell["runs"] if r["source"] == REFERENCE]
    if isinstance(cell.get("notes"), dict) and REFERENCE in cell["notes"]:
        notes[REFERENCE] = cell["notes"][REFERENCE]
    saved = _load_images(_images_path(path))
    if REFERENCE in saved:
        made[REFERENCE] = saved[REFERENCE]


def _mirror_side(*, runs: list, notes: dict, made: dict) -> None:
    """The reference side of an audit of a model against itself: the audited side's students, notes
    and images. Trained against the same weights answering the same way, they would be the same."""
    runs[:0] = [{**r, "source": REFERENCE} for r in runs]
    if TEACHER in notes:
        notes[REFERENCE] = notes[TEACHER]
    if TEACHER in made:  # copies: a safetensors file holds no two names of one tensor
        made[REFERENCE] = tuple(t.clone() for t in made[TEACHER])


