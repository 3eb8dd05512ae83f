"""Defences side by side: several defended teachers audited against one reference.

    from attacks.compare import compare
    result = compare(reference="runs/normal", teachers=["runs/nasty", "runs/stingy2"], out="runs/compare")

Each teacher gets a full audit in ``out/audits/<name>/`` with the same students, seeds, epochs
and attacks. What does not depend on the audited teacher is trained once, in the first audit:
its baseline cells (students from scratch, and with label smoothing) are copied into the others
before they run, and each audit checks them against its own settings; the other audits train
only their teacher's students for each attack and take the reference's students from the first
audit's cell of that attack and seed (``audit(reference_from=...)``); the reference among the
teachers, audited against itself, trains one side (``mirrored``). Every audit resumes like
``nasty audit`` does, so a killed comparison goes on where it stopped.

``compare.json`` has one row per teacher: its defence, test accuracy, cost against the
reference, and per student the stolen accuracy of the strongest attack (the worst case);
``compare.md`` is the same as one table (:func:`format_compare`: what ``nasty compare`` prints),
with what each teacher's outputs add to its labels (:func:`attacks.audit.beyond_labels`);
``compare.png`` plots teacher accuracy against the best stolen accuracy with the Pareto front, and
below it the served NLL (utility for honest users: :mod:`nasty.utility`) against the same.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from nasty import checkpoint as ckpt
from nasty.errors import NastyError
from nasty.released import Brought
from nasty.safety import md_text as md
from nasty.safety import plot_text
from nasty.utility import UTILITY_HEADER, utility_cells

from . import scale
from .audit import BASELINES, audit, beyond_labels
from .summary import REFERENCE, TEACHER

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["compare", "format_compare", "pareto_front", "plot_compare"]


def _slug(path: Path, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name or "teacher").strip("-.") or "teacher"
    slug, k = name, 1
    while slug in taken:
        k += 1
        slug = f"{name}-{k}"
    taken.add(slug)
    return slug


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: higher teacher accuracy (x) and lower stolen
    accuracy (y) are better. Sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def compare(*, reference, teachers, attacks=None, students=None, seeds=(0, 1, 2), epochs: int | None = None,
            student_steps: int | None = None, alpha: float = 0.9, tau: float | None = None, out="runs/compare", device="auto", quiet: bool = False,
            force: bool = False, attack_options: dict | None = None, plots: bool = True, echo=None,
            ensemble: bool | None = None, devices=None, **brought: Unpack[Brought]) -> dict:
    """Audit each of ``teachers`` against ``reference`` (see the module doc); return compare.json's dict.
    ``brought`` goes to every audit as it is (:class:`nasty.released.Brought`: ``train_fraction``, the
    thief's share of the training set; ``data_root`` and ``download``, where the teachers' dataset is; ...).
    ``devices``: one worker process per device shares out every audit's cells, as :func:`attacks.audit.audit`'s."""
    if devices is not None:  # the workers run the whole comparison; this process then writes it
        args = {k: v for k, v in locals().items() if k != "brought"}
        return scale.spread(compare, {**args, **brought}, devices=devices)
    teachers = [Path(t).expanduser() for t in teachers]
    if not teachers:
        raise NastyError("`teachers`: give at least one teacher to compare")
    out = Path(out).expanduser()
    taken: set[str] = set()
    names = [_slug(t, taken) for t in teachers]
    kwargs = {"reference": reference, "students": students, "seeds": seeds, "epochs": epochs,
              "student_steps": student_steps, "alpha": alpha, "tau": tau, "device": device, "quiet": quiet, "force": force, "attack_options": attack_options,
              "plots": False, "ensemble": ensemble, **brought}
    if attacks is not None:
        kwargs["attacks"] = attacks
    rows, first = [], None
    for name, teacher in zip(names, teachers):
        folder = out / "audits" / name
        if first is not None:  # the teacher-free baselines of the first audit serve every other one
            (folder / "cells").mkdir(parents=True, exist_ok=True)
            for cell in (first / "cells").glob("*.json"):
                if cell.name.startswith(tuple(BASELINES)) and not (folder / "cells" / cell.name).exists():
                    # whole or not at all: other processes of a shared run may read it at once
                    ckpt.atomic_write(folder / "cells" / cell.name, lambda p, c=cell: shutil.copyfile(c, p))
        report = audit(teacher=teacher, out=folder, reference_from=first, **kwargs)
        first = first or folder
        audited, released = report["teachers"][TEACHER], report["teachers"][REFERENCE]
        worst = {w["student"]: w for w in report["worst_case"]}
        rows.append({
            "teacher": str(teacher), "name": name, "defence": audited["defence"],  # the audit read the card
            "accuracy": audited["accuracy"], "reference_accuracy": released["accuracy"],
            "cost": report["teacher_cost"], **({"utility": audited["utility"]} if "utility" in audited else {}),
            "worst_case": {s: {"attack": w["attack"], "acc_from_teacher": w["acc_from_nasty"]["mean"]}
                           for s, w in worst.items()},
            "summary": report["summary"],
        })
        if echo and not quiet and scale.writes():
            echo(f"{name} ({rows[-1]['defence']}): accuracy {rows[-1]['accuracy']:.2f}%, worst case " + ", ".join(
                f"{s} {w['acc_from_teacher']:.2f}% ({w['attack']})" for s, w in rows[-1]["worst_case"].items()))
    result = {"reference": str(reference), "rows": rows,
              "settings": {k: v for k, v in kwargs.items() if k in ("students", "seeds", "epochs", "student_steps",
                                                                    "alpha", "tau", "attacks")}}
    result["settings"]["train_fraction"] = brought.get("train_fraction", 1.0)
    result["settings"]["seeds"] = list(seeds)
    if not scale.writes():  # another process of a shared run writes it
        return result
    ckpt.write_json(out / "compare.json", result)
    ckpt.atomic_write(out / "compare.md", lambda p: Path(p).write_text(format_compare(result) + "\n"))
    if plots:
        from nasty.diagnostics import save_figure

        save_figure(plot_compare(result), out / "compare.png")
    return result


def format_compare(result: dict) -> str:
    """compare.json as one markdown table: per defence its accuracy and cost, the stolen accuracy
    (mean over seeds) of every attack and student, the worst case, and what the teacher's outputs
    add to its labels (the strongest thief of the outputs less the best student from labels alone:
    :func:`attacks.audit.beyond_labels`, from the row's summary; ``-`` where the row has no thief of
    the outputs); the baselines under it. Every name is escaped, since defences and paths come from files."""
    rows = result["rows"]
    if not rows:
        return "no teachers compared"
    students = list(rows[0]["worst_case"])
    attacks = list(dict.fromkeys(s["attack"] for r in rows for s in r["summary"]))
    stolen = lambda r, a, st: next((f"{s['acc_from_nasty']['mean']:.2f}" for s in r["summary"]  # noqa: E731
                                    if (s["attack"], s["student"]) == (a, st)), "-")
    def adds(summary):
        by_student = {b["student"]: f"{b['teacher']['adds']:+.2f}" for b in beyond_labels(summary)}
        return " / ".join(by_student.get(st, "-") for st in students)
    header = ["defence", "teacher accuracy", "cost", *UTILITY_HEADER, *(f"{a} {' / '.join(students)}" for a in attacks),
              f"worst case {' / '.join(students)}", f"outputs add to labels {' / '.join(students)}"]
    lines = ["| " + " | ".join(md(c) for c in header) + " |", "|" + "---|" * len(header)]
    for r in rows:  # cells escaped piece by piece: the parentheses are ours
        worst = " / ".join(f"{w['acc_from_teacher']:.2f} ({md(w['attack'])})"
                           for w in (r["worst_case"][s] for s in students))
        cells = [md(r["defence"] or "none"), f"{r['accuracy']:.2f}", f"{r['cost']:+.2f}", *utility_cells(r.get("utility")),
                 *(md(" / ".join(stolen(r, a, st) for st in students)) for a in attacks), worst, adds(r["summary"])]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]["summary"]
    base = lambda key: " / ".join(next((f"{s[key]['mean']:.2f}" for s in first  # noqa: E731
                                        if s["student"] == st and isinstance(s.get(key), dict)), "-") for st in students)
    n = len(result.get("settings", {}).get("seeds") or [])
    share = result.get("settings", {}).get("train_fraction", 1.0)
    thief = "" if share == 1.0 else f", the thief holding {md(share)} of the training set"
    return "\n".join([
        f"Stolen accuracy (%, the student's final-epoch test accuracy, mean over {n} seed{'s' * (n != 1)}{thief}), reference "
        f"{md(result['reference'])}; without a teacher: scratch {md(base('acc_scratch'))}, label smoothing "
        f"{md(base('acc_label_smoothing'))} (students {md(' / '.join(students))}). Utility of the served "
        f"probabilities on the test set: NLL in nats, ECE over 15 confidence bins, top-5 accuracy in %.", "", *lines])


def plot_compare(result: dict):
    """Per student, the best stolen accuracy against teacher accuracy (top row) and, where the rows
    measured it, against the served NLL (bottom row: what a defence costs honest users in
    probability quality); each panel draws its Pareto front. Older results without utility: one row."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    students = list(rows[0]["worst_case"]) if rows else []
    served = bool(rows) and all(isinstance(r.get("utility"), dict) for r in rows)
    fig = Figure(figsize=(6 * max(1, len(students)), 5 * (1 + served)), layout="constrained")
    for k, student in enumerate(students):
        stolen = [r["worst_case"][student]["acc_from_teacher"] for r in rows]
        _pareto_panel(fig.add_subplot(1 + served, len(students), k + 1), rows,
                      [(r["accuracy"], y) for r, y in zip(rows, stolen)], better_x="high",
                      xlabel="teacher test accuracy (%)", ylabel=f"best stolen accuracy of {student} (%)",
                      title=f"{student}: worst case over the attacks")
        if served:
            _pareto_panel(fig.add_subplot(2, len(students), len(students) + k + 1), rows,
                          [(r["utility"]["nll"], y) for r, y in zip(rows, stolen)], better_x="low",
                          xlabel="served NLL on the test set (nats, lower is better)",
                          ylabel=f"best stolen accuracy of {student} (%)",
                          title=f"{student}: protection against utility")
    return fig


def _pareto_panel(ax, rows: list[dict], pts: list[tuple[float, float]], *, better_x: str, xlabel: str, ylabel: str,
                  title: str) -> None:
    """One scatter of ``pts`` (one per row, labelled by name) with its Pareto front: lower y is better,
    and higher x (``better_x="high"``) or lower x (``"low"``)."""
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", zorder=3)
    named: dict[tuple[float, float], list[str]] = {}  # teachers on one point share one label
    for p, r in zip(pts, rows):
        named.setdefault(p, []).append(plot_text(r.get("name") or r["defence"]))
    right = max(p[0] for p in pts) if pts else 0.0
    for p, names in named.items():  # the rightmost teachers labelled on their right, the others on their left
        out = p[0] >= right
        ax.annotate("\n".join(names), p, textcoords="offset points", xytext=(5 if out else -5, -3),
                    ha="left" if out else "right", va="top", fontsize=7)
    sign = 1.0 if better_x == "high" else -1.0
    front = pareto_front([(sign * x, y) for x, y in pts])
    front = sorted(front, key=lambda i: pts[i][0])
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="C3", linestyle="--", marker="o",
            markersize=11, markerfacecolor="none",
            label=f"Pareto front ({'more accurate' if better_x == 'high' else 'lower NLL'}, less stolen)")
    ax.margins(x=0.35, y=0.12)  # room for the labels inside the panel
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
