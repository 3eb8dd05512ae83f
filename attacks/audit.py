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

import os
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from nasty import __version__, accel
from nasty import checkpoint as ckpt
from nasty.data import TensorData
from nasty.defences import defence_of
from nasty.errors import Diverged, NastyError, NastyWarning, one_line
from nasty.safety import html_text as h
from nasty.safety import md_text as md
from nasty.safety import read_json
from nasty.schema import AuditCell, PartialCell, validate
from nasty.models import create_model
from nasty.recipes import RECIPES
from nasty.released import Brought, is_adversary, label, open_models
from nasty.trainer import TrainConfig, evaluate, resolve_device
from nasty.utility import UTILITY_HEADER, utility, utility_cells

from . import ATTACKS, DEFAULT_ATTACKS, IMAGE_TITLES, attack_names, attack_settings, create_attack, progress, scale
from .base import LabelSmoothing, Scratch, batchable, run_cells

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["audit", "summarize", "worst_case", "beyond_labels", "format_table", "default_tau"]

SOURCES = ("normal", "nasty")
BASELINES = {"scratch": Scratch, "label-smoothing": LabelSmoothing}  # trained once per seed, no teacher


def default_tau(num_classes: int) -> float:
    """The KD temperature of the paper: 4, and 20 for 100 classes or more."""
    return 20.0 if num_classes >= 100 else 4.0


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
    ``teacher`` is the audited (nasty) model, ``reference`` the normal one it was hardened
    against. ``attack_options``
    maps an attack name to constructor arguments (e.g. ``{"deepinversion": {"pool_size": 2048}}``), over
    the dataset recipe's (:data:`nasty.recipes.RECIPES`). With ``plots``, ``report.html`` (one
    self-contained file) and the PNGs beside it show logit peaks, t-SNE and synthesised images.
    A cell in training saves its state (students, optimizer, the attack's generator or image
    pool) to ``cells/<cell>.partial.pt`` at the end of an epoch once ``checkpoint_seconds`` have
    passed since the last save (0: every epoch); the next audit with the same settings goes on
    from there.

    ``teacher`` and ``reference`` may be run directories, weights files or ``nn.Module`` objects;
    ``brought`` says what they do not record and where the data is (:class:`nasty.released.Brought`:
    ``arch``, ``dataset`` or ``data``, ``mean``/``std`` or ``normalization``, ``inputs``, ...); its
    ``train_fraction`` is the thief's share of the training set. A warning (not an error) says when
    the reference is not the adversary the teacher's card records, or is itself hardened.

    ``ensemble=True`` trains an attack's students of one architecture, every seed and both
    teachers, as one batched ensemble (:func:`attacks.base.run_cells`). ``None`` (the default):
    on a GPU an attack's seeds train together (one teacher forward per batch for all of them) and
    their whole training step replays as one CUDA graph per epoch (docs/speed.md compares the ways);
    on the CPU each cell trains alone. ``False``: each cell alone everywhere. An attack
    that reads its students' features is trained eagerly, one cell at a time, either way. The
    cells and their partial states have one format every way.

    ``reference_from``: the folder of another audit against the same reference (its ``out``;
    :func:`attacks.compare.compare` passes its first audit's). Where it holds a finished cell of an
    attack and seed with this audit's settings and reference, only the audited teacher's students
    are trained; the reference's students are that cell's (the cell records ``reference_from``).
    An audit of a model against itself (the same sha256, answering the same way: the row of no
    defence in a comparison) trains one side and records it as both (the cell records ``mirrored``).

    ``devices`` (``"cuda:0,cuda:1"``, or a list; ``"cpu,cpu"`` works too): one worker process per device
    trains the cells, then this one writes the report. Under ``torchrun`` each rank trains cells and
    rank 0 writes it. Either way the numbers are those of one process (:mod:`attacks.scale`).
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
    train_fraction = brought.get("train_fraction", 1.0)
    recipe = RECIPES[data.name]
    students = list(dict.fromkeys(students or recipe.students))  # each architecture once
    tau = default_tau(data.num_classes) if tau is None else tau
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

    out = Path(out).expanduser()
    cells_dir = _cells_dir(out)
    common = {"dataset": data.name, "train_fraction": train_fraction, "students": students, "epochs": epochs,
              "batch_size": recipe.batch_size, "lr": recipe.lr,
              # a step budget other than the share's own epochs (cells from before it trained epochs * an epoch's steps)
              **({"steps": schedule.steps} if schedule.steps != epochs * schedule.epoch_steps(len(data.train_y)) else {}),
              "teachers": {src: cards[src].get("sha256") for src in SOURCES},
              # what each teacher answers through: a served top-1 has its source's weights (and sha256)
              "served": {src: cards[src].get("output_transform") or None for src in SOURCES}}
    todo = _plan(attacks, seeds, opts, common=common, cells_dir=cells_dir, force=force,
                 reference_cells=reference_cells)
    cells, trained, report = [], False, None
    finished = {}  # cells trained by this run, by path (a group of seeds finishes several at once)
    train = dict(models=models, students=students, data=data, schedule=schedule, device=dev, quiet=quiet,
                 checkpoint_seconds=checkpoint_seconds)

    def train_group(group: list[_Cell]) -> dict:
        try:
            return _train_cells(group, ensemble=bool(ensemble) and batchable(group[0].attack), **train)
        except Diverged as e:  # one thief that failed: recorded in the report, the others go on
            return progress.failed_cells(group, e)

    share = scale.current()  # several processes: each trains what no other holds, then all are done
    if share is not None:
        trained = any(c.done is None for c in todo)
        todo = share.run(todo, group=lambda t, i: _group(t, i, ensemble=ensemble, device=dev), train=train_group,
                         refresh=lambda c: _refresh(c, force=force))
    writes = share is None or share.writer
    for i, c in enumerate(todo):
        if c.done is None and c.path not in finished:
            finished.update(train_group(_group(todo, i, ensemble=ensemble, device=dev)))
            trained = True
        cells.append(c.done or finished[c.path])
        report = progress.annotate(_report(cells, attacks, data, accuracy, cards["nasty"], cards["normal"], alpha,
                                           tau, schedule, train_fraction, common["teachers"], served, epochs=epochs),
                                   cells, len(todo))
        if writes:
            ckpt.write_json(out / "report.json", report)
            ckpt.atomic_write(out / "report.md", lambda p, r=report: Path(p).write_text(format_markdown(r)))
    if not writes:
        return report
    if plots and (trained or not (out / "report.html").exists()):
        grids = {}  # the first seed's images of each data-free attack, as its cell saved them
        for a in attacks:
            saved = _load_images(_images_path(cells_dir / f"{a}-seed{seeds[0]}.json"))
            for src in (s for s in SOURCES if s in saved):
                grids[f"{IMAGE_TITLES.get(a, a)}, from the {src} teacher"] = saved[src]
        _write_html(report, out, models, data, tau=tau, grids=grids, quiet=quiet)
    progress.raise_if_failed(report, out)
    return report


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
        nasty_on, normal_on = (card.get("dataset") for _, _, card in items)
        if None not in (nasty_on, normal_on) and nasty_on != normal_on:
            raise NastyError(f"`reference` {label(reference)} was trained on {normal_on}, but `teacher` "
                             f"{label(teacher)} on {nasty_on}; audit a teacher against its own normal model")
        _warn_about_reference(items[0][2], items[1][2], reference)

    (nasty, normal), data = open_models({"teacher": teacher, "reference": reference}, served=True,
                                        check=same_dataset, **brought)
    return {"normal": normal.model, "nasty": nasty.model}, {"normal": normal.card, "nasty": nasty.card}, data


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


def _cells_dir(out: Path) -> Path:
    """``out/cells``, made, with the temporary files of a killed write removed."""
    cells_dir = out / "cells"
    if cells_dir.is_symlink():  # a published audit folder must not send our writes elsewhere
        raise NastyError(f"`out` {one_line(out)}: cells is a link ({one_line(os.readlink(cells_dir))}); refused")
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
        for folder in (out, cells_dir):
            ckpt.remove_stale_temps(folder)
    except OSError as e:
        raise NastyError(f"`out` {out} is not writable: {e.strerror or e}") from None
    return cells_dir


def _plan(attacks: list[str], seeds: list[int], opts: dict, *, common: dict, cells_dir: Path, force: bool,
          reference_cells: Path | None = None):
    """Every cell of the grid, the baselines first, with what ``cells_dir`` holds of it (and what
    ``reference_cells`` holds of its reference side). Every finished cell is read (and a foreign
    one refused) before anything is written."""
    todo = []
    teachers, served = common["teachers"], common["served"]
    itself = teachers["nasty"] is not None and teachers["nasty"] == teachers["normal"] and served["nasty"] == served["normal"]
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


def _reference_cells(folder) -> Path | None:
    """``folder/cells`` of an earlier audit, or ``None`` for none; a folder without one fails, named."""
    if folder is None:
        return None
    cells = Path(folder).expanduser() / "cells"
    if not cells.is_dir():
        raise NastyError(f"`reference_from` {one_line(folder)}: not an audit folder (it has no cells/)")
    return cells


def _reference_cell(path: Path, key: dict, *, students: list[str]) -> tuple[Path, dict] | None:
    """Another audit's finished cell at ``path`` whose reference side this cell can take: the same
    settings, seed and reference (known by its sha256); any audited teacher. ``None`` otherwise."""
    if key["teachers"].get("normal") is None or not path.is_file():
        return None
    try:
        cell = _read_cell(path)
    except NastyError:
        return None
    saved = cell["key"]
    theirs = saved.get("teachers") if isinstance(saved, dict) else None
    served = saved.get("served") if isinstance(saved, dict) else None
    if not isinstance(theirs, dict) or not isinstance(served, dict) or saved != {
            **key, "teachers": {**key["teachers"], "nasty": theirs.get("nasty")},
            "served": {**key["served"], "nasty": served.get("nasty")}}:
        return None
    runs = [r for r in cell["runs"] if r["source"] == "normal"]
    if sorted(r["student"] for r in runs) != sorted(students) or any(
            (r["attack"], r["seed"]) != (key["attack"], key["seed"]) for r in runs):
        return None
    return path, cell


def _warn_about_reference(nasty_card: dict, normal_card: dict, reference) -> None:
    """One line on stderr (a warning, not an error) when the comparison is not the one the audit is for."""
    if normal_card.get("kind") == "nasty":
        warnings.warn(NastyWarning(f"`reference` {label(reference)} is itself a hardened (nasty) teacher; the audit "
                                   f"measures immunity against the normal model the teacher was hardened from"))
    elif is_adversary(nasty_card, normal_card) is False:
        adv = nasty_card["adversary"]
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


def _train_cells(group: list[_Cell], *, models, students, data, schedule: TrainConfig, device, quiet,
                 checkpoint_seconds, ensemble: bool) -> dict:
    """Train the cells of ``group`` (one attack, one or more seeds) in one :func:`run_cells`; write
    each cell (and a data-free cell's images) as it is finished; return them by path."""
    name, attack = group[0].name, group[0].attack
    seeds = [c.seed for c in group]
    resumes = {c.seed: c.resume for c in group if c.resume}
    t0 = time.perf_counter() - sum(r["seconds"] for r in resumes.values())
    one_side = group[0].one_side  # the reference's students come from another audit's cells, or are the audited's
    teachers = {name: None} if name in BASELINES else {"nasty": models["nasty"]} if one_side else models
    cfg = replace(schedule, seed=seeds[0])
    notes, made = {}, {}  # made: what a data-free attack synthesised, kept for report.html
    acc = run_cells(attack, teachers, students, data, config=cfg, seeds=seeds, device=device, quiet=quiet,
                    desc=f"{name} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}",
                    resume=resumes or None, notes=notes, images=made,
                    save=_partial_saver({c.seed: (c.partial, c.key) for c in group}, t0=t0, every=checkpoint_seconds),
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
        if not quiet:
            from tqdm.auto import tqdm

            tqdm.write(f"{name} seed {c.seed} ({cell['seconds']:.1f}s): " + ", ".join(
                f"{r['student']}<-{r['source']} {r['accuracy']:.2f}" for r in cell["runs"]))
    return written


def _take_reference_side(c: _Cell, *, runs: list, notes: dict, made: dict) -> None:
    """Put the reference side of ``c.reference`` (its runs first, as a cell of both sides has
    them, its notes and its synthesised images) into what the cell ``c`` will record."""
    path, cell = c.reference
    runs[:0] = [r for r in cell["runs"] if r["source"] == "normal"]
    if isinstance(cell.get("notes"), dict) and "normal" in cell["notes"]:
        notes["normal"] = cell["notes"]["normal"]
    saved = _load_images(_images_path(path))
    if "normal" in saved:
        made["normal"] = saved["normal"]


def _mirror_side(*, runs: list, notes: dict, made: dict) -> None:
    """The reference side of an audit of a model against itself: the audited side's students, notes
    and images. Trained against the same weights answering the same way, they would be the same."""
    runs[:0] = [{**r, "source": "normal"} for r in runs]
    if "nasty" in notes:
        notes["normal"] = notes["nasty"]
    if "nasty" in made:  # copies: a safetensors file holds no two names of one tensor
        made["normal"] = tuple(t.clone() for t in made["nasty"])


IMAGES_PER_CLASS = 4  # what a data-free cell keeps of its synthesised images (report.html shows 2 a class)


def _images_path(cell: Path) -> Path:
    return cell.with_name(cell.name.replace(".json", ".images.safetensors"))


def _save_images(path: Path, made: dict) -> None:
    """``source -> (images, labels)`` as one safetensors file (images in fp16: they are only shown)."""
    from safetensors.torch import save

    tensors = {}
    for src, (x, y) in made.items():
        tensors[f"{src}.images"] = x.half().contiguous()
        tensors[f"{src}.labels"] = y.contiguous()
    data = save(tensors)  # encoded here, written into atomic_write's own temporary file (save_file would replace it)
    ckpt.atomic_write(path, lambda p: Path(p).write_bytes(data))


def _load_images(path: Path) -> dict:
    """What :func:`_save_images` wrote; empty for a cell without images (not data-free, or made by an
    older version) or an unreadable file (the report then shows no grid for it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        t = load_file(str(path)) if path.exists() else {}
    except (OSError, SafetensorError):
        return {}
    return {src: (t[f"{src}.images"].float(), t[f"{src}.labels"]) for src in SOURCES
            if f"{src}.images" in t and f"{src}.labels" in t}


def _write_html(report, out: Path, models, data, *, tau, grids, quiet) -> None:
    """report.html: the teachers, the table, and the diagnostics figures, images embedded."""
    import base64
    import io

    from nasty.diagnostics import audit_figures, save_figure

    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write("plotting logit peaks, t-SNE and synthesised images for report.html")
    figures = audit_figures(models, data, tau=tau, grids=grids)
    embedded = {}
    for name, (fig, numbers) in figures.items():
        save_figure(fig, out / f"{name}.png", numbers=numbers)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        embedded[name] = base64.b64encode(buf.getvalue()).decode()
    ckpt.atomic_write(out / "report.html", lambda p: Path(p).write_text(format_html(report, embedded)))


def _html_rows(header: list[str], rows: list[list[str]], *, signed_from: int) -> str:
    """Table rows; the columns from ``signed_from`` on are margins, green when >= 0, red below."""

    def cell(i, c):
        if i < signed_from:
            return f"<td>{h(c)}</td>"
        return f"<td class='{'bad' if c.startswith('-') and c != '-' else 'good'}'>{h(c)}</td>"

    head = "<tr>" + "".join(f"<th>{h(name)}</th>" for name in header) + "</tr>"
    return head + "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)


def format_html(report: dict, images: dict[str, str]) -> str:
    """One self-contained page: ``images`` maps a section to a base64 PNG."""
    t, s = report["teachers"], report["settings"]
    worst = _html_rows(WORST_HEADER, _worst_cells(report), signed_from=3)
    beyond = _beyond_cells(report)
    beyond = (f"<section id='beyond-labels'><h2>Beyond the labels</h2><p>{h(BEYOND_TITLE)}</p>"
              f"<table>{_html_rows(BEYOND_HEADER, beyond, signed_from=7)}</table></section>\n") if beyond else ""
    served = _utility_rows(report)
    beyond += (f"<section id='utility'><h2>Utility for honest users</h2><p>{h(UTILITY_TITLE)}</p>"
               f"<table>{_html_rows(UTILITY_ROWS_HEADER, served, signed_from=len(UTILITY_ROWS_HEADER))}</table>"
               f"</section>\n") if served else ""
    rows = _html_rows(TABLE_HEADER, _table_cells(report), signed_from=6)
    sections = {
        "logits": ("Softened outputs (logit peaks)",
                   "softmax(z/tau) of test images and, over the test set, the mean sorted profile and the number of "
                   "peaks (classes within half of the top probability). A nasty teacher spreads its probability "
                   "over wrong classes while keeping the right one on top."),
        "tsne": ("t-SNE of features and logits",
                 "Penultimate features and logits of the test set, coloured by class."),
        "images": ("What the data-free attacks synthesised",
                   "Images DAFL's generator and DeepInversion made from each teacher while the audit trained "
                   "(the first seed's cell), by the teacher's class."),
    }
    figures = "".join(
        f"<section id='{k}'><h2>{title}</h2><p>{text}</p><img alt='{k}' src='data:image/png;base64,{images[k]}'>"
        f"</section>" for k, (title, text) in sections.items() if k in images)
    seeds = sorted({r["seed"] for r in report["runs"]})
    chosen_ = "".join(f"<section class='chosen'><p>{title}</p><ul>{''.join(f'<li>{b}</li>' for b in bullets)}</ul>"
                      f"</section>\n" for title, bullets in _chosen_text(report, h))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>KD-immunity audit: {h(report['dataset'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} td {{ text-align: right; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
.good {{ color: #1a7f37; }} .bad {{ color: #b42318; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>KD-immunity audit: {h(report['dataset'])}</h1>
{''.join(f"<p class='bad'><b>{h(line)}</b></p>" for line in progress.status_lines(report))}
<section id="worst-case"><h2>Worst case per student</h2>
<p>The attack that gets most from the audited teacher (highest mean final-epoch test accuracy of its students):
the defence is as good as this row. Immunity ± the spread over seeds of the per-seed difference.</p>
<table>{worst}</table></section>
{beyond}<section id="teachers"><h2>Teachers</h2><table>
<tr><th>teacher</th><th>arch</th><th>test accuracy (%)</th><th>defence</th><th>omega</th><th>tau</th></tr>
<tr><td>reference</td><td>{h(str(t['normal']['arch']))}</td><td>{t['normal']['accuracy']:.2f}</td>
<td>{h(t['normal'].get('defence', 'none'))}</td><td></td><td></td></tr>
<tr><td>audited</td><td>{h(str(t['nasty']['arch']))}</td><td>{t['nasty']['accuracy']:.2f}</td>
<td>{h(t['nasty'].get('defence', ''))}</td><td>{h(t['nasty']['omega'])}</td><td>{h(t['nasty']['tau'])}</td></tr></table>
<p>Teacher cost (reference - audited): <b>{report['teacher_cost']:+.2f}</b> points.</p></section>
<section id="immunity"><h2>Immunity</h2>
<p>Final-epoch test accuracy (%) of students, mean ± std over seeds {h(seeds)}; {h(schedule_text(s))}, KD alpha
{h(s['alpha'])}, tau {h(s['tau'])}; the attacker holds {report['train_fraction']:g} of the training set.
immunity = from reference - from teacher; below scratch = scratch - from teacher; below label smoothing =
label smoothing - from teacher.</p>
<table>{rows}</table></section>
{chosen_}{figures}
<p>Machine-readable: report.json. nasty {h(str(report.get('nasty_version', '')))}.</p>
</body></html>
"""


def _load_cell(path: Path, key: dict, *, force: bool):
    """A finished cell with this audit's key; one that does not fit the schema is refused
    (or, with ``force``, done again)."""
    if not os.path.lexists(path):
        return None
    try:
        cell = _read_cell(path)
    except NastyError as e:
        if force:
            return None
        raise NastyError(f"{e}; remove it, or pass `force` to redo the cell") from None
    return cell if _same_key(cell["key"], key, path, force=force) else None


def _read_cell(path: Path) -> dict:
    """A finished cell as the schema allows it, its settings under their current names."""
    cell = validate(AuditCell, read_json(path), path)
    _rename_settings(cell["key"])
    return cell


def _rename_settings(key: dict | None) -> None:
    """An older cell's key, in place, with the attack's settings under their current names, a
    setting added since at the value the cell ran with (``Attack.added``), without the teachers
    for a baseline cell (older audits recorded them there too), and with bare teachers where it
    does not say what they were served through (audits before ``served`` did not; their cells are
    taken as cells of bare teachers, which most were: one of a defended teacher is then refused
    for it, and redone with ``force``)."""
    if isinstance(key, dict) and key.get("attack") in BASELINES:
        key.pop("teachers", None)
    elif isinstance(key, dict) and isinstance(key.get("teachers"), dict):
        key.setdefault("served", dict.fromkeys(SOURCES))
    attack = ATTACKS.get((key or {}).get("attack"))
    settings = (key or {}).get("settings")
    if attack is not None and isinstance(settings, dict):
        for old, new in getattr(attack, "renamed", {}).items():
            if old in settings and new not in settings:
                settings[new] = settings.pop(old)
        for name, before in getattr(attack, "added", {}).items():  # what a cell from before the setting ran with
            settings.setdefault(name, before)


def _refresh(c: _Cell, *, force: bool) -> _Cell:
    """``c`` as its files say now (another process may have finished it, or saved its state, since the plan)."""
    done = _load_cell(c.path, c.key, force=force)
    if done is not None:
        return c._replace(done=done, resume=None)
    return c._replace(resume=_load_partial(c.partial, c.key, force=force))


def _load_partial(path: Path, key: dict, *, force: bool):
    """The saved state of an unfinished cell with the same settings, or ``None``. One of another
    audit (or one that cannot be read) is refused, or with ``force`` dropped: ``force`` redoes
    what has other settings, and still goes on with a cell in training that has these."""
    try:
        state = ckpt.load_resume_file(path)
        if state is not None:
            validate(PartialCell, state, path)
            _rename_settings(state["key"])
        if state is None or _same_key(state["key"], key, path, force=force):
            return state
    except NastyError:
        if not force:
            raise
    path.unlink(missing_ok=True)
    return None


def _partial_saver(cells: dict, *, t0: float, every: float):
    """``run_cells``' ``save``: when ``every`` seconds have passed since the last write, write each
    seed's state to its cell's partial file (``cells``: seed -> ``(path, key)``), with its share of
    the seconds spent."""
    last = [time.perf_counter()]

    def save(states: dict) -> None:
        now = time.perf_counter()
        if now - last[0] >= every:
            for seed, state in states.items():
                path, key = cells[seed]
                ckpt.save_resume_file(path, {"key": key, "seconds": (now - t0) / len(states), **state})
            last[0] = time.perf_counter()

    return save


def _same_key(saved: dict | None, key: dict, path: Path, *, force: bool) -> bool:
    """True if a cell's saved key is this audit's; refuse another audit's results unless ``force``."""
    if saved == key:
        return True
    if force:
        return False
    name, saved, now = scale.first_difference(saved or {}, key)  # e.g. settings.pool_size
    raise NastyError(f"`out` {one_line(path.parent.parent)} holds results of another audit ({one_line(name)[:80]} "
                     f"differs: {one_line(repr(saved))[:80]} there, {now!r} now); use another `out` or `force` to redo them")


def _mean_std(xs):
    return {"mean": round(statistics.mean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict], attacks, students) -> list[dict]:
    """Mean/std per (attack, student) and source; immunity, below_scratch and
    below_label_smoothing from the means. ``immunity_std`` is the spread over seeds of the paired
    per-seed difference (from normal - from nasty, same seed). Runs without a label-smoothing
    baseline (older audits) give ``None`` for its fields."""
    rows = []
    for attack in attacks:
        for student in students:
            acc = {src: {r["seed"]: r["accuracy"] for r in runs if r["attack"] == attack and r["student"] == student
                         and r["source"] == src} for src in (*BASELINES, *SOURCES)}
            if not (acc["scratch"] and acc["normal"] and acc["nasty"]):
                continue
            m = {src: _mean_std(list(v.values())) if v else None for src, v in acc.items()}
            paired = _mean_std([acc["normal"][seed] - a for seed, a in acc["nasty"].items() if seed in acc["normal"]])
            smooth = m["label-smoothing"]
            rows.append({"attack": attack, "student": student, "seeds": len(acc["nasty"]),
                         "acc_scratch": m["scratch"], "acc_label_smoothing": smooth, "acc_from_normal": m["normal"],
                         "acc_from_nasty": m["nasty"],
                         "immunity": round(m["normal"]["mean"] - m["nasty"]["mean"], 4), "immunity_std": paired["std"],
                         "below_scratch": round(m["scratch"]["mean"] - m["nasty"]["mean"], 4),
                         "below_label_smoothing": round(smooth["mean"] - m["nasty"]["mean"], 4) if smooth else None})
    return rows


def worst_case(summary: list[dict]) -> list[dict]:
    """Per student, the summary row of the attack that gets most from the nasty teacher (highest
    mean accuracy; the first attack on a tie): the defence is as good as this row."""
    rows = []
    for student in dict.fromkeys(r["student"] for r in summary):
        w = max((r for r in summary if r["student"] == student), key=lambda r: r["acc_from_nasty"]["mean"])
        rows.append({"student": student, "attack": w["attack"], "acc_from_nasty": w["acc_from_nasty"],
                     "immunity": w["immunity"], "immunity_std": w.get("immunity_std"),
                     "below_scratch": w["below_scratch"], "below_label_smoothing": w.get("below_label_smoothing")})
    return rows


def beyond_labels(summary: list[dict], labels_only=None) -> list[dict]:
    """Per student and teacher, what its outputs add to its labels: the strongest thief that reads
    the outputs (an attack not in ``labels_only``) against the best student made from labels alone
    (scratch, label smoothing, or a thief of the top-1 answers). A served model must give its
    labels; a defence of its outputs can act on this difference only (CMIM's test, undistillable
    when no KD student beats a label-smoothing student, with the strongest labels-only student).
    Students without a thief of the outputs are left out. ``labels_only``: the attacks that read
    labels alone (default: those of the summary whose class says ``labels_only``)."""
    if labels_only is None:
        labels_only = {r["attack"] for r in summary if getattr(ATTACKS.get(r["attack"]), "labels_only", False)}
    rows = []
    for student in dict.fromkeys(r["student"] for r in summary):
        mine = [r for r in summary if r["student"] == student]
        soft = [r for r in mine if r["attack"] not in labels_only]
        if not soft:
            continue
        row = {"student": student}
        base = [("scratch", mine[0]["acc_scratch"]["mean"])]
        if mine[0].get("acc_label_smoothing"):
            base.append(("label-smoothing", mine[0]["acc_label_smoothing"]["mean"]))
        for side, field in (("teacher", "acc_from_nasty"), ("reference", "acc_from_normal")):
            labels = max(base + [(r["attack"], r[field]["mean"]) for r in mine if r["attack"] in labels_only],
                         key=lambda t: t[1])  # the first on a tie: a baseline before a thief
            best = max(soft, key=lambda r: r[field]["mean"])
            row[side] = {"outputs": {"attack": best["attack"], "accuracy": best[field]["mean"]},
                         "labels": {"attack": labels[0], "accuracy": labels[1]},
                         "adds": round(best[field]["mean"] - labels[1], 4)}
        rows.append(row)
    return rows


def _report(cells, attacks, data, accuracy, nasty_card, normal_card, alpha, tau, schedule, train_fraction,
            shas: dict, served: dict | None = None, *, epochs: int) -> dict:
    key = cells[0]["key"]
    runs, notes = [], {}
    for cell in cells:
        for r in cell["runs"]:
            if r["source"] in BASELINES:  # a baseline is trained once per seed and listed under every attack
                runs += [{**r, "attack": a} for a in attacks]
            else:
                runs.append(r)
        if cell.get("notes"):
            notes[f"{cell['key']['attack']}-seed{cell['key']['seed']}"] = cell["notes"]
    summary = summarize(runs, attacks, key["students"])
    return {
        "nasty_version": __version__,
        "dataset": data.name,
        "train_fraction": train_fraction,
        "teachers": {
            "normal": {"arch": normal_card.get("arch"), "accuracy": round(accuracy["normal"], 4),
                       "defence": defence_of(normal_card),
                       "sha256": shas["normal"], **_utility_field(served, "normal")},
            "nasty": {"arch": nasty_card.get("arch"), "accuracy": round(accuracy["nasty"], 4),
                      "defence": defence_of(nasty_card),
                      "omega": nasty_card.get("omega"), "tau": nasty_card.get("tau"),
                      "sha256": shas["nasty"], **_utility_field(served, "nasty")},
        },
        "teacher_cost": round(accuracy["normal"] - accuracy["nasty"], 4),
        "settings": {"students": key["students"], "epochs": epochs, "steps": schedule.total_steps(len(data.train_y)),
                     "student_epochs": schedule.epochs, "samples": len(data.train_y),
                     "batch_size": key["batch_size"],
                     "lr": key["lr"], "alpha": alpha, "tau": tau,
                     "attacks": {c["key"]["attack"]: c["key"]["settings"] for c in cells}},
        "seconds": round(sum(c["seconds"] for c in cells), 2),
        "runs": runs,
        "summary": summary,
        "worst_case": worst_case(summary),
        "beyond_labels": beyond_labels(summary),
        **({"notes": notes} if notes else {}),
    }


def schedule_text(settings: dict) -> str:
    """How long every student trained, in words: "1860 steps (200 epochs of 134 images)";
    an audit from before the step budget recorded epochs alone."""
    if "steps" not in settings:
        return f"{settings['epochs']} epochs"
    return f"{settings['steps']} steps ({settings['student_epochs']} epochs of {settings['samples']} images)"


def _utility_field(served: dict | None, side: str) -> dict:
    """``{"utility": {nll, ece, top5}}`` of one side's served answers (none when not measured)."""
    return {"utility": served[side]} if served and side in served else {}


UTILITY_TITLE = ("What an honest user gets from each teacher's served probabilities on the test set (NLL: lower is "
                 "better, capped at 27.63 nats a sample where a defence cut the true class off; ECE: 0 is calibrated; "
                 "top-5: the true class among the 5 most probable, or all classes if fewer):")


def _utility_rows(report: dict) -> list[list[str]]:
    """Per teacher its accuracy and served utility (none in a report from before them)."""
    t = report["teachers"]
    if not any("utility" in t[side] for side in ("normal", "nasty")):
        return []
    return [[name, str(t[side].get("defence", "-")), f"{t[side]['accuracy']:.2f}", *utility_cells(t[side].get("utility"))]
            for name, side in (("reference", "normal"), ("audited teacher", "nasty"))]


def _pm(m: dict | None) -> str:
    return "-" if m is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def _signed(v: float | None, std: float | None = None) -> str:
    return "-" if v is None else f"{v:+.2f}" + ("" if std is None else f" ± {std:.2f}")


def _worst_cells(report: dict) -> list[list[str]]:
    """The worst-case rows as table cells (an older report has none: computed from its summary)."""
    return [[r["student"], r["attack"], _pm(r["acc_from_nasty"]), _signed(r["immunity"], r.get("immunity_std")),
             _signed(r["below_scratch"]), _signed(r.get("below_label_smoothing"))]
            for r in report.get("worst_case") or worst_case(report["summary"])]


# the audit's two sides, named generically: the reference (``teachers.normal`` in report.json, the model as
# released) and the audited teacher (``teachers.nasty``: a nasty teacher or any defended model)
WORST_HEADER = ["student", "worst attack", "from teacher", "immunity", "below scratch", "below label smoothing"]
TABLE_HEADER = ["attack", "student", "scratch", "label smoothing", "from reference", "from teacher", "immunity",
                "below scratch", "below label smoothing"]


UTILITY_ROWS_HEADER = ["teacher", "defence", "accuracy", *UTILITY_HEADER]
BEYOND_HEADER = ["student", "teacher: best on outputs", "on labels alone", "adds", "reference: best on outputs",
                 "on labels alone", "adds"]
BEYOND_TITLE = ("What the outputs add to the labels (the strongest thief that reads a teacher's outputs, minus the "
                "best student from labels alone: scratch, label smoothing or a thief of the top-1 answers; a "
                "defence of the outputs can act on this only):")


def _beyond_cells(report: dict) -> list[list[str]]:
    """The beyond-labels rows as table cells (none in a report from before them)."""
    def at(x):
        return f"{x['attack']} {x['accuracy']:.2f}"
    return [[r["student"], *(c for side in ("teacher", "reference")
                             for c in (at(r[side]["outputs"]), at(r[side]["labels"]), _signed(r[side]["adds"])))]
            for r in report.get("beyond_labels") or []]


def _table_cells(report: dict) -> list[list[str]]:
    return [[r["attack"], r["student"], _pm(r["acc_scratch"]), _pm(r.get("acc_label_smoothing")),
             _pm(r["acc_from_normal"]), _pm(r["acc_from_nasty"]), _signed(r["immunity"], r.get("immunity_std")),
             _signed(r["below_scratch"]), _signed(r.get("below_label_smoothing"))] for r in report["summary"]]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; every cell escaped (``|`` and markup), since names can come from files."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(md(c) for c in r) + " |" for r in rows])


def _pick(p) -> tuple[str, int, int] | None:
    """``("tau/alpha", candidates tied at the best validation score, candidates)`` of one pick."""
    if not isinstance(p, dict) or not all(isinstance(p.get(k), (int, float)) for k in ("tau", "alpha")):
        return None
    tried = [r.get("val_accuracy") for r in p.get("tried") or [] if isinstance(r, dict)]
    return f"{p['tau']:g}/{p['alpha']:g}", max(1, tried.count(p.get("val_accuracy"))), len(tried)


def chosen(report: dict) -> dict[str, dict[str, dict[str, list]]]:
    """What the attacks that tune themselves chose (kd-sweep's picks), from the report's notes:
    ``{attack: {"teacher"|"reference": {student: [(seed, "tau/alpha", tied, candidates), ...]}}}``,
    seeds in order; ``tied`` counts the candidates that shared the best validation score (the first
    of them is taken, so a pick with every candidate tied is no choice at all)."""
    out = {}
    for cell, by_source in (report.get("notes") or {}).items():
        attack, _, seed = str(cell).rpartition("-seed")
        for src, note in (by_source.items() if isinstance(by_source, dict) and seed.isdigit() else ()):
            picks = note.get("picks") if isinstance(note, dict) else None
            for student, p in (picks.items() if isinstance(picks, dict) and src in SOURCES else ()):
                if (pick := _pick(p)) is not None:
                    side = "teacher" if src == "nasty" else "reference"
                    out.setdefault(attack, {}).setdefault(side, {}).setdefault(str(student), []).append((int(seed), *pick))
    for sides in out.values():
        for students in sides.values():
            for rows in students.values():
                rows.sort()
    return out


def _chosen_text(report: dict, esc) -> list[tuple[str, list[str]]]:
    """Per attack that tuned itself: a title and its bullets, names escaped by ``esc``."""
    said = []
    for attack, sides in chosen(report).items():
        bullets = [f"from the {side}: " + "; ".join(
            f"{esc(student)} " + ", ".join(pick + (f" ({tied} of {n} tied)" if tied > 1 else "")
                                           for _, pick, tied, n in rows)
            for student, rows in sides[side].items()) for side in ("teacher", "reference") if side in sides]
        if any(1 < tied == n for ss in sides.values() for rows in ss.values() for _, _, tied, n in rows):
            bullets.append("where every candidate tied, the search saw no signal (too few images or steps to tell "
                           "them apart): that pick is the first pair, not a choice.")
        said.append((f"What {esc(attack)} chose, tau/alpha per seed (tied: candidates that shared the best "
                     f"validation score; the first is taken):", bullets))
    return said


def _chosen_lines(report: dict) -> list[str]:
    return [line for title, bullets in _chosen_text(report, md) for line in ("", title, *(f"- {b}" for b in bullets))]


def format_table(report: dict) -> str:
    """The worst case per student, then the whole summary, as markdown tables (what ``nasty
    audit`` prints), then what the attacks that tune themselves chose. Reads older reports too
    (no label-smoothing baseline, no worst case)."""
    beyond, served = _beyond_cells(report), _utility_rows(report)
    return "\n".join(["Worst case per student (the attack that gets most from the audited teacher):", "",
                      *_markdown(WORST_HEADER, _worst_cells(report)), "",
                      *([BEYOND_TITLE, "", *_markdown(BEYOND_HEADER, beyond), ""] if beyond else []),
                      *([UTILITY_TITLE, "", *_markdown(UTILITY_ROWS_HEADER, served), ""] if served else []),
                      "Every attack:", "", *_markdown(TABLE_HEADER, _table_cells(report)), *_chosen_lines(report)])


def format_markdown(report: dict) -> str:
    t, s = report["teachers"], report["settings"]
    seeds = sorted({r["seed"] for r in report["runs"]})
    return "\n".join([
        f"# KD-immunity audit: {md(report['dataset'])}",
        "",
        *(f"**{md(line)}**\n" for line in progress.status_lines(report)),
        f"- reference: {md(t['normal']['arch'])}, test accuracy {t['normal']['accuracy']:.2f}% "
        f"(defence {md(t['normal'].get('defence', 'none'))})",
        f"- audited teacher: {md(t['nasty']['arch'])}, test accuracy {t['nasty']['accuracy']:.2f}% "
        f"(defence {md(t['nasty'].get('defence', ''))}); teacher cost {report['teacher_cost']:+.2f} points",
        f"- students: {md(', '.join(s['students']))}; seeds {md(seeds)}; {md(schedule_text(s))}, batch "
        f"{md(s['batch_size'])}, lr {md(s['lr'])}; KD alpha {md(s['alpha'])}, tau {md(s['tau'])}; attacker's share of the training set "
        f"{report['train_fraction']:g}",
        "",
        "Final-epoch test accuracy (%), mean ± std over seeds. immunity = from reference - from teacher "
        "(large is good; ± the spread of the per-seed difference); below scratch = scratch - from teacher, "
        "below label smoothing = label smoothing - from teacher (positive: distilling the audited teacher "
        "is worse than training without a teacher, plainly or with smoothed labels).",
        "",
        format_table(report),
        "",
        f"{report['seconds']:.1f} s of training in {len(report['runs'])} rows.",
        "",
    ])
