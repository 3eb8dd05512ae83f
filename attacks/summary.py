"""The summary of an audit's runs: per attack and student the mean and spread over seeds, the
immunity and the margins below the baselines (:func:`summarize`), the worst case per student
(:func:`worst_case`), what a teacher's outputs add to its labels (:func:`beyond_labels`), and the
whole report as ``report.json`` holds it (:func:`build_report`).

The two sides are the *reference* (the model as released) and the *teacher* audited (a nasty teacher
or any defended model). report.json, the cells and each run's ``source`` name them ``normal`` and
``nasty``, as the first audits did (:data:`REFERENCE`, :data:`TEACHER`; :class:`nasty.schema.AuditReport`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nasty import __version__
from nasty.defences import defence_of

from . import ATTACKS
from .baselines import LabelSmoothing, Scratch

if TYPE_CHECKING:
    from nasty.trainer import TrainConfig

REFERENCE, TEACHER = "normal", "nasty"  # the sides' names in report.json, cells and runs
SOURCES = (REFERENCE, TEACHER)
SIDE_NAMES = {REFERENCE: "reference", TEACHER: "teacher"}  # as the reports say them
BASELINES = {"scratch": Scratch, "label-smoothing": LabelSmoothing}  # trained once per seed, no teacher


def mean_std(xs) -> dict:
    """``{"mean", "std"}`` of ``xs``, rounded to 4 places (std 0 for one value): every spread a report states."""
    return {"mean": round(statistics.mean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}


def summarize(runs: list[dict], attacks, students) -> list[dict]:
    """Mean/std per (attack, student) and source; immunity, below_scratch and
    below_label_smoothing from the means. ``immunity_std`` is the spread over seeds of the paired
    per-seed difference (from reference - from teacher, same seed). Runs without a label-smoothing
    baseline (older audits) give ``None`` for its fields."""
    rows = []
    for attack in attacks:
        for student in students:
            acc = {src: {r["seed"]: r["accuracy"] for r in runs if r["attack"] == attack and r["student"] == student
                         and r["source"] == src} for src in (*BASELINES, *SOURCES)}
            reference, teacher = acc[REFERENCE], acc[TEACHER]
            if not (acc["scratch"] and reference and teacher):
                continue
            m = {src: mean_std(list(v.values())) if v else None for src, v in acc.items()}
            paired = mean_std([reference[seed] - a for seed, a in teacher.items() if seed in reference])
            smooth, from_teacher = m["label-smoothing"], m[TEACHER]["mean"]
            rows.append({"attack": attack, "student": student, "seeds": len(teacher),
                         "acc_scratch": m["scratch"], "acc_label_smoothing": smooth, "acc_from_normal": m[REFERENCE],
                         "acc_from_nasty": m[TEACHER],
                         "immunity": round(m[REFERENCE]["mean"] - from_teacher, 4), "immunity_std": paired["std"],
                         "below_scratch": round(m["scratch"]["mean"] - from_teacher, 4),
                         "below_label_smoothing": round(smooth["mean"] - from_teacher, 4) if smooth else None})
    return rows


def worst_case(summary: list[dict]) -> list[dict]:
    """Per student, the summary row of the attack that gets most from the teacher audited (highest
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



def seed_accuracies(report: dict, attack: str, student: str, source: str) -> dict[int, float]:
    """Per seed, the accuracy of ``student`` taught by ``attack`` from ``source`` (:data:`REFERENCE`
    or :data:`TEACHER`) in ``report``; a baseline (scratch, label smoothing) has no teacher: its own runs."""
    if attack in BASELINES:
        return {r["seed"]: r["accuracy"] for r in report["runs"] if r["student"] == student and r["source"] == attack}
    return {r["seed"]: r["accuracy"] for r in report["runs"]
            if r["student"] == student and r["attack"] == attack and r["source"] == source}


def value_beyond_labels(report: dict, student: str, side: str) -> dict | None:
    """What ``side``'s (``"teacher"`` or ``"reference"``) outputs add beyond its labels for ``student``:
    the :func:`beyond_labels` pair (the strongest thief of the outputs and the best labels-only
    student, picked by their means), as the mean and std over seeds of the per-seed difference, with
    the two attacks (``outputs``, ``labels``). ``None`` where the report has no thief of the outputs."""
    row = next((r for r in beyond_labels(report["summary"]) if r["student"] == student), None)
    if row is None:
        return None
    source = {"teacher": TEACHER, "reference": REFERENCE}[side]
    best, labels = row[side]["outputs"]["attack"], row[side]["labels"]["attack"]
    a, b = (seed_accuracies(report, attack, student, source) for attack in (best, labels))
    return {**mean_std([a[seed] - b[seed] for seed in a if seed in b]), "outputs": best, "labels": labels}

@dataclass(frozen=True, kw_only=True)
class Side:
    """What the report says of one teacher: its card, test accuracy (%) as served, the sha256 of its
    weights and what an honest user gets from its served answers (``None``: not measured)."""

    card: dict
    accuracy: float
    sha256: str | None
    utility: dict | None = None


@dataclass(frozen=True, kw_only=True)
class AuditFacts:
    """What a report records besides its cells: the two sides, the data, and how every student
    trained (``epochs`` over the whole training set, as ``schedule`` on the thief's ``samples``)."""

    dataset: str
    attacks: list[str]
    reference: Side
    teacher: Side
    train_fraction: float
    epochs: int
    schedule: TrainConfig
    samples: int
    alpha: float
    tau: float


def build_report(cells: list[dict], facts: AuditFacts) -> dict:
    """The report of the cells done so far (``report.json``: :class:`nasty.schema.AuditReport`)."""
    key = cells[0]["key"]
    runs, notes = [], {}
    for cell in cells:
        for r in cell["runs"]:
            if r["source"] in BASELINES:  # a baseline is trained once per seed and listed under every attack
                runs += [{**r, "attack": a} for a in facts.attacks]
            else:
                runs.append(r)
        if cell.get("notes"):
            notes[f"{cell['key']['attack']}-seed{cell['key']['seed']}"] = cell["notes"]
    summary = summarize(runs, facts.attacks, key["students"])
    reference, teacher = facts.reference, facts.teacher
    return {
        "nasty_version": __version__,
        "dataset": facts.dataset,
        "train_fraction": facts.train_fraction,
        "teachers": {
            REFERENCE: {"arch": reference.card.get("arch"), "accuracy": round(reference.accuracy, 4),
                        "defence": defence_of(reference.card), "sha256": reference.sha256,
                        **_utility_field(reference)},
            TEACHER: {"arch": teacher.card.get("arch"), "accuracy": round(teacher.accuracy, 4),
                      "defence": defence_of(teacher.card),
                      "omega": teacher.card.get("omega"), "tau": teacher.card.get("tau"),
                      "sha256": teacher.sha256, **_utility_field(teacher)},
        },
        "teacher_cost": round(reference.accuracy - teacher.accuracy, 4),
        "settings": {"students": key["students"], "epochs": facts.epochs,
                     "steps": facts.schedule.total_steps(facts.samples), "student_epochs": facts.schedule.epochs,
                     "samples": facts.samples, "batch_size": key["batch_size"], "lr": key["lr"],
                     "alpha": facts.alpha, "tau": facts.tau,
                     "attacks": {c["key"]["attack"]: c["key"]["settings"] for c in cells}},
        "seconds": round(sum(c["seconds"] for c in cells), 2),
        "runs": runs,
        "summary": summary,
        "worst_case": worst_case(summary),
        "beyond_labels": beyond_labels(summary),
        **({"notes": notes} if notes else {}),
    }


def _utility_field(side: Side) -> dict:
    """``{"utility": {nll, ece, top5}}`` of one side's served answers (none when not measured)."""
    return {"utility": side.utility} if side.utility is not None else {}
