"""The summary of an audit's runs: per attack and student the mean and spread over seeds, the
immunity and the margins below the baselines (:func:`summarize`), the worst case per student
(:func:`worst_case`), what a teacher's outputs add to its labels (:func:`beyond_labels`), and the
whole report as ``report.json`` holds it (:func:`_report`).
"""

from __future__ import annotations

import statistics

from nasty import __version__
from nasty.defences import defence_of

from . import ATTACKS
from .base import LabelSmoothing, Scratch


SOURCES = ("normal", "nasty")
BASELINES = {"scratch": Scratch, "label-smoothing": LabelSmoothing}  # trained once per seed, no teacher


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


def _utility_field(served: dict | None, side: str) -> dict:
    """``{"utility": {nll, ece, top5}}`` of one side's served answers (none when not measured)."""
    return {"utility": served[side]} if served and side in served else {}
