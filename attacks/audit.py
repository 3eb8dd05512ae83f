"""The KD-immunity audit: attack the normal and the nasty teacher the same way, compare students.

    from attacks.audit import audit
    report = audit(teacher="runs/nasty", reference="runs/normal", out="runs/audit")

The grid is cells of (attack, seed), plus one ``scratch`` cell per seed (students trained on
the real labels, the baseline every attack is compared with). A cell trains every student
architecture against both teachers in one loop (one teacher forward per batch per teacher)
and is written to ``out/cells/`` as soon as it finishes; running the same audit again skips
the cells that are done. Accuracies are final-epoch test accuracies in percent (never the best
epoch). ``report.json`` and ``report.md`` are rewritten after every cell.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from nasty import __version__
from nasty import checkpoint as ckpt
from nasty.data import load_dataset
from nasty.errors import NastyError, one_line
from nasty.safety import html_text as h
from nasty.safety import md_text as md
from nasty.safety import read_json
from nasty.schema import AuditCell, PartialCell, validate
from nasty.models import create_model
from nasty.recipes import RECIPES
from nasty.trainer import TrainConfig, evaluate, resolve_device

from . import ATTACKS, attack_settings, create_attack
from .base import Scratch, run_students

__all__ = ["audit", "summarize", "format_table", "default_tau"]

SOURCES = ("normal", "nasty")


def default_tau(num_classes: int) -> float:
    """The KD temperature of the paper: 4, and 20 for 100 classes or more."""
    return 20.0 if num_classes >= 100 else 4.0


def audit(*, teacher, reference, attacks=tuple(ATTACKS), students=None, seeds=(0, 1, 2), epochs: int | None = None,
          alpha: float = 0.9, tau: float | None = None, train_fraction: float = 1.0, data_root=None,
          download: bool = False, device="auto", out="runs/audit", force: bool = False, quiet: bool = False,
          unsafe_pickle: bool = False, attack_options: dict | None = None, plots: bool = True,
          checkpoint_seconds: float = 60.0) -> dict:
    """Run the grid and write ``report.json`` / ``report.md`` to ``out``; return the report dict.

    ``teacher`` is the audited (nasty) model, ``reference`` the normal one it was hardened
    against. ``train_fraction`` is the attacker's share of the training set. ``attack_options``
    maps an attack name to constructor arguments (e.g. ``{"deepinversion": {"pool_size": 2048}}``), over
    the dataset recipe's (:data:`nasty.recipes.RECIPES`). With ``plots``, ``report.html`` (one
    self-contained file) and the PNGs beside it show logit peaks, t-SNE and synthesised images.
    A cell in training saves its state (students, optimizer, the attack's generator or image
    pool) to ``cells/<cell>.partial.pt`` at the end of an epoch once ``checkpoint_seconds`` have
    passed since the last save (0: every epoch); the next audit with the same settings goes on
    from there.
    """
    attacks = list(attacks)
    for name in attacks:
        attack_settings(name)  # unknown names fail here, before anything is loaded
    for name, options in (attack_options or {}).items():
        known = attack_settings(name, option="--attack-option")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise NastyError(f"--attack-option: {name} has no setting {unknown[0]!r}; "
                             f"it has {', '.join(known) or 'none'}")
    if not 0.0 <= alpha <= 1.0:
        raise NastyError(f"--alpha must be in [0, 1], got {alpha}")
    if tau is not None and tau <= 0:
        raise NastyError(f"--tau must be > 0, got {tau}")
    seeds = list(seeds)
    if not seeds:
        raise NastyError("--seeds: give at least one seed")
    if checkpoint_seconds < 0:
        raise NastyError(f"--checkpoint-seconds must be >= 0, got {checkpoint_seconds}")

    nasty_sd, nasty_card = ckpt.load_weights(teacher, unsafe_pickle=unsafe_pickle)
    normal_sd, normal_card = ckpt.load_weights(reference, unsafe_pickle=unsafe_pickle, option="--reference")
    dataset = nasty_card.get("dataset") or normal_card.get("dataset")
    if not dataset:
        raise NastyError(f"--teacher {teacher} does not record its dataset; audit run directories of `nasty harden`")
    if normal_card.get("dataset") and normal_card["dataset"] != dataset:
        raise NastyError(f"--reference {reference} was trained on {normal_card['dataset']}, "
                         f"but --teacher {teacher} on {dataset}; audit a teacher against its own normal model")
    data = load_dataset(dataset, root=data_root, download=download, train_fraction=train_fraction)
    recipe = RECIPES[data.name]
    fit = {"num_classes": data.num_classes, "in_chans": data.input_shape[0]}  # a mismatch fails here, named
    nasty_model = ckpt.build_model(nasty_sd, nasty_card, source=f"--teacher {teacher}", **fit).eval()
    normal_model = ckpt.build_model(normal_sd, normal_card, source=f"--reference {reference}", **fit).eval()
    students = list(dict.fromkeys(students or recipe.students))  # each architecture once
    for s in students:  # unknown or unbuildable architectures fail before any training
        create_model(s, num_classes=data.num_classes, in_chans=data.input_shape[0])
    tau = default_tau(data.num_classes) if tau is None else tau
    dev = resolve_device(device)
    models = {"normal": normal_model, "nasty": nasty_model}
    opts = {a: {**recipe.attack_options.get(a, {}), **(attack_options or {}).get(a, {})} for a in attacks}
    for name in attacks:  # an attack that cannot run on these teachers fails now, not hours in
        for model in models.values():
            create_attack(name, **opts[name]).check(model)
    accuracy = {k: evaluate(m.to(dev), data, device=dev)["accuracy"] for k, m in models.items()}

    out = Path(out).expanduser()
    cells_dir = out / "cells"
    if cells_dir.is_symlink():  # a published audit folder must not send our writes elsewhere
        raise NastyError(f"--out {one_line(out)}: cells is a link ({one_line(os.readlink(cells_dir))}); refused")
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
        for folder in (out, cells_dir):
            ckpt.remove_stale_temps(folder)
    except OSError as e:
        raise NastyError(f"--out {out} is not writable: {e.strerror or e}") from None
    epochs = epochs or recipe.epochs
    common = {"dataset": data.name, "train_fraction": train_fraction, "students": students, "epochs": epochs,
              "batch_size": recipe.batch_size, "lr": recipe.lr,
              "teachers": {"normal": normal_card.get("sha256"), "nasty": nasty_card.get("sha256")}}
    plan = [("scratch", seed) for seed in seeds] + [(a, seed) for a in attacks for seed in seeds]
    todo = []  # every finished cell is read (and a foreign one refused) before anything is written
    for name, seed in plan:
        attack = Scratch() if name == "scratch" else create_attack(name, alpha=alpha, tau=tau, **opts[name])
        key = {**common, "attack": name, "settings": attack.settings(), "seed": seed}
        path = cells_dir / f"{name}-seed{seed}.json"
        partial = path.with_name(f"{name}-seed{seed}.partial.pt")
        cell = _load_cell(path, key, force=force)
        if cell is not None:
            partial.unlink(missing_ok=True)  # left by a run killed between writing the cell and removing it
        todo.append((name, seed, attack, key, path, cell, partial,
                     None if cell is not None else _load_partial(partial, key, force=force)))
    cells, trained = [], False
    report = None
    for name, seed, attack, key, path, cell, partial, resume in todo:
        if cell is None:
            t0 = time.perf_counter() - (resume["seconds"] if resume else 0.0)
            teachers = {"scratch": None} if name == "scratch" else models
            cfg = TrainConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed)
            acc = run_students(attack, teachers, students, data, config=cfg, device=dev, quiet=quiet,
                               desc=f"{name} seed {seed}", resume=resume,
                               save=_partial_saver(partial, key, t0=t0, every=checkpoint_seconds))
            cell = {"key": key, "seconds": round(time.perf_counter() - t0, 2),
                    "runs": [{"attack": name, "student": s, "source": src, "seed": seed, "accuracy": round(a, 4)}
                             for (src, s), a in acc.items()]}
            if resume:
                cell["resumed_from_epoch"] = int(resume["epoch"])
            ckpt.write_json(path, cell)
            partial.unlink(missing_ok=True)
            trained = True
            if not quiet:
                from tqdm.auto import tqdm

                tqdm.write(f"{name} seed {seed} ({cell['seconds']:.1f}s): " + ", ".join(
                    f"{r['student']}<-{r['source']} {r['accuracy']:.2f}" for r in cell["runs"]))
        cells.append(cell)
        report = _report(cells, attacks, data, accuracy, nasty_card, normal_card, alpha, tau, epochs, train_fraction)
        ckpt.write_json(out / "report.json", report)
        ckpt.atomic_write(out / "report.md", lambda p, r=report: Path(p).write_text(format_markdown(r)))
    if plots and (trained or not (out / "report.html").exists()):
        _write_html(report, out, models, data, tau=tau, epochs=epochs, batch_size=recipe.batch_size,
                    attacks={a: create_attack(a, tau=tau, **opts[a]) for a in attacks if a in ("dafl", "deepinversion")},
                    quiet=quiet)
    return report


def _write_html(report, out: Path, models, data, *, tau, epochs, batch_size, attacks, quiet) -> None:
    """report.html: the teachers, the table, and the diagnostics figures, images embedded."""
    import base64
    import io

    from nasty.diagnostics import audit_figures, save_figure

    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write("plotting logit peaks, t-SNE and synthesised images for report.html")
    steps = epochs * max(1, len(data.train_y) // batch_size)  # the generator steps DAFL had in the audit
    figures = audit_figures(models, data, tau=tau, attacks=attacks, dafl_steps=steps)
    embedded = {}
    for name, (fig, numbers) in figures.items():
        save_figure(fig, out / f"{name}.png", numbers=numbers)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        embedded[name] = base64.b64encode(buf.getvalue()).decode()
    ckpt.atomic_write(out / "report.html", lambda p: Path(p).write_text(format_html(report, embedded)))


def format_html(report: dict, images: dict[str, str]) -> str:
    """One self-contained page: ``images`` maps a section to a base64 PNG."""
    t, s = report["teachers"], report["settings"]
    rows = "".join(
        f"<tr><td>{h(r['attack'])}</td><td>{h(r['student'])}</td><td>{_pm(r['acc_scratch'])}</td>"
        f"<td>{_pm(r['acc_from_normal'])}</td><td>{_pm(r['acc_from_nasty'])}</td>"
        f"<td class='{'good' if r['immunity'] >= 0 else 'bad'}'>{r['immunity']:+.2f}</td>"
        f"<td>{r['below_scratch']:+.2f}</td></tr>" for r in report["summary"])
    sections = {
        "logits": ("Softened outputs (logit peaks)",
                   "softmax(z/tau) of test images and, over the test set, the mean sorted profile and the number of "
                   "peaks (classes within half of the top probability). A nasty teacher spreads its probability "
                   "over wrong classes while keeping the right one on top."),
        "tsne": ("t-SNE of features and logits",
                 "Penultimate features and logits of the test set, coloured by class."),
        "images": ("What the data-free attacks synthesised",
                   "Images DAFL's generator and DeepInversion made from each teacher, by the teacher's class."),
    }
    figures = "".join(
        f"<section id='{k}'><h2>{title}</h2><p>{text}</p><img alt='{k}' src='data:image/png;base64,{images[k]}'>"
        f"</section>" for k, (title, text) in sections.items() if k in images)
    seeds = sorted({r["seed"] for r in report["runs"]})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>KD-immunity audit: {h(report['dataset'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} td {{ text-align: right; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
.good {{ color: #1a7f37; }} .bad {{ color: #b42318; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>KD-immunity audit: {h(report['dataset'])}</h1>
<section id="teachers"><h2>Teachers</h2><table>
<tr><th>teacher</th><th>arch</th><th>test accuracy (%)</th><th>omega</th><th>tau</th></tr>
<tr><td>normal</td><td>{h(str(t['normal']['arch']))}</td><td>{t['normal']['accuracy']:.2f}</td><td></td><td></td></tr>
<tr><td>nasty</td><td>{h(str(t['nasty']['arch']))}</td><td>{t['nasty']['accuracy']:.2f}</td>
<td>{h(t['nasty']['omega'])}</td><td>{h(t['nasty']['tau'])}</td></tr></table>
<p>Teacher cost (normal - nasty): <b>{report['teacher_cost']:+.2f}</b> points.</p></section>
<section id="immunity"><h2>Immunity</h2>
<p>Final-epoch test accuracy (%) of students, mean ± std over seeds {h(seeds)}; {h(s['epochs'])} epochs, KD alpha
{h(s['alpha'])}, tau {h(s['tau'])}; the attacker holds {report['train_fraction']:g} of the training set.
immunity = from normal - from nasty; below scratch = scratch - from nasty.</p>
<table><tr><th>attack</th><th>student</th><th>scratch</th><th>from normal</th><th>from nasty</th><th>immunity</th>
<th>below scratch</th></tr>{rows}</table></section>
{figures}
<p>Machine-readable: report.json. nasty {h(str(report.get('nasty_version', '')))}.</p>
</body></html>
"""


def _load_cell(path: Path, key: dict, *, force: bool):
    """A finished cell with this audit's key; one that does not fit the schema is refused
    (or, with ``force``, done again)."""
    if not os.path.lexists(path):
        return None
    try:
        cell = validate(AuditCell, read_json(path), path)
    except NastyError as e:
        if force:
            return None
        raise NastyError(f"{e}; remove it, or pass --force to redo the cell") from None
    return cell if _same_key(cell["key"], key, path, force=force) else None


def _load_partial(path: Path, key: dict, *, force: bool):
    """The saved state of an unfinished cell with the same settings, or ``None``."""
    if force:
        path.unlink(missing_ok=True)
        return None
    state = ckpt.load_resume_file(path)
    if state is None:
        return None
    validate(PartialCell, state, path)
    return state if _same_key(state["key"], key, path, force=force) else None


def _partial_saver(path: Path, key: dict, *, t0: float, every: float):
    """``run_students``' ``save``: write the state when ``every`` seconds have passed since the last write."""
    last = [time.perf_counter()]

    def save(state: dict) -> None:
        now = time.perf_counter()
        if now - last[0] >= every:
            ckpt.save_resume_file(path, {"key": key, "seconds": now - t0, **state})
            last[0] = time.perf_counter()

    return save


def _same_key(saved: dict | None, key: dict, path: Path, *, force: bool) -> bool:
    """True if a cell's saved key is this audit's; refuse another audit's results unless ``force``."""
    if saved == key:
        return True
    if force:
        return False
    saved, now, name = saved or {}, key, ""
    while True:  # descend to the first setting that differs (e.g. settings.pool_size)
        diff = next((k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)), None)
        if diff is None:
            break
        name = f"{name}.{diff}" if name else diff
        saved, now = saved.get(diff), now.get(diff)
        if not (isinstance(saved, dict) and isinstance(now, dict)):
            break
    raise NastyError(f"--out {one_line(path.parent.parent)} holds results of another audit ({one_line(name)[:80]} "
                     f"differs: {one_line(repr(saved))[:80]} there, {now!r} now); use another --out or --force to redo them")


def _mean_std(xs):
    return {"mean": round(statistics.mean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict], attacks, students) -> list[dict]:
    """Mean/std per (attack, student) and source; immunity and below_scratch from the means."""
    rows = []
    for attack in attacks:
        for student in students:
            acc = {src: [r["accuracy"] for r in runs if r["attack"] == attack and r["student"] == student
                         and r["source"] == src] for src in ("scratch", *SOURCES)}
            if not all(acc.values()):
                continue
            m = {src: _mean_std(v) for src, v in acc.items()}
            rows.append({"attack": attack, "student": student, "seeds": len(acc["nasty"]),
                         "acc_scratch": m["scratch"], "acc_from_normal": m["normal"], "acc_from_nasty": m["nasty"],
                         "immunity": round(m["normal"]["mean"] - m["nasty"]["mean"], 4),
                         "below_scratch": round(m["scratch"]["mean"] - m["nasty"]["mean"], 4)})
    return rows


def _report(cells, attacks, data, accuracy, nasty_card, normal_card, alpha, tau, epochs, train_fraction) -> dict:
    key = cells[0]["key"]
    runs = []
    for cell in cells:
        for r in cell["runs"]:
            if r["source"] == "scratch":  # the baseline is trained once per seed and listed under every attack
                runs += [{**r, "attack": a} for a in attacks]
            else:
                runs.append(r)
    return {
        "nasty_version": __version__,
        "dataset": data.name,
        "train_fraction": train_fraction,
        "teachers": {
            "normal": {"arch": normal_card.get("arch"), "accuracy": round(accuracy["normal"], 4),
                       "sha256": key["teachers"]["normal"]},
            "nasty": {"arch": nasty_card.get("arch"), "accuracy": round(accuracy["nasty"], 4),
                      "omega": nasty_card.get("omega"), "tau": nasty_card.get("tau"),
                      "sha256": key["teachers"]["nasty"]},
        },
        "teacher_cost": round(accuracy["normal"] - accuracy["nasty"], 4),
        "settings": {"students": key["students"], "epochs": epochs, "batch_size": key["batch_size"],
                     "lr": key["lr"], "alpha": alpha, "tau": tau,
                     "attacks": {c["key"]["attack"]: c["key"]["settings"] for c in cells}},
        "seconds": round(sum(c["seconds"] for c in cells), 2),
        "runs": runs,
        "summary": summarize(runs, attacks, key["students"]),
    }


def _pm(m: dict) -> str:
    return f"{m['mean']:.2f} ± {m['std']:.2f}"


def format_table(report: dict) -> str:
    """The summary as a markdown table (what ``nasty audit`` prints)."""
    lines = ["| attack | student | scratch | from normal | from nasty | immunity | below scratch |",
             "|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        lines.append(f"| {md(r['attack'])} | {md(r['student'])} | {_pm(r['acc_scratch'])} | {_pm(r['acc_from_normal'])} | "
                     f"{_pm(r['acc_from_nasty'])} | {r['immunity']:+.2f} | {r['below_scratch']:+.2f} |")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    t, s = report["teachers"], report["settings"]
    seeds = sorted({r["seed"] for r in report["runs"]})
    return "\n".join([
        f"# KD-immunity audit: {md(report['dataset'])}",
        "",
        f"- normal teacher: {md(t['normal']['arch'])}, test accuracy {t['normal']['accuracy']:.2f}%",
        f"- nasty teacher: {md(t['nasty']['arch'])}, test accuracy {t['nasty']['accuracy']:.2f}% "
        f"(omega {md(t['nasty']['omega'])}, tau {md(t['nasty']['tau'])}); teacher cost {report['teacher_cost']:+.2f} points",
        f"- students: {md(', '.join(s['students']))}; seeds {md(seeds)}; {md(s['epochs'])} epochs, batch "
        f"{md(s['batch_size'])}, lr {md(s['lr'])}; KD alpha {md(s['alpha'])}, tau {md(s['tau'])}; attacker's share of the training set "
        f"{report['train_fraction']:g}",
        "",
        "Final-epoch test accuracy (%), mean ± std over seeds. immunity = from normal - from nasty "
        "(large is good); below scratch = scratch - from nasty (positive: distilling the nasty teacher "
        "is worse than training without a teacher).",
        "",
        format_table(report),
        "",
        f"{report['seconds']:.1f} s of training in {len(report['runs'])} rows.",
        "",
    ])
