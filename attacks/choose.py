"""Choose a serving defence on validation data: the most useful answers that leave a thief nothing beyond labels.

    from attacks.choose import choose_defence
    choice = choose_defence(teacher="runs/normal", train_fraction=0.1, out="runs/choice")
    choice["chosen"]        # e.g. "top-2"; serve choice["served"], a run directory of `nasty defend`

A served model must answer with its labels, so what a defence of its outputs can take from a thief
is what they add beyond them (:func:`attacks.summary.beyond_labels`). Which part of the outputs
carries that value depends on the task: on digit pairs it is the ranking beyond the top two, which
rounding removes; on digits it is the teacher's doubt on a few hard images, which top-2 removes and
rounding keeps (docs/protection.md, "The frontier"). No transform but labels alone holds on every
task, and labels alone cost an honest user most. So the choice is measured on the user's own task:

1. a validation split (``validation``, a fraction of the training set, seeded; a dataset with groups
   holds out whole groups) is carved out; the students train on the rest and are scored on it,
   never on the test set;
2. each candidate is served (:func:`nasty.runs.defend`) and audited against the undefended teacher
   (:func:`attacks.compare.compare`), the thief holding ``train_fraction`` of the rest, with
   ``attacks`` (:data:`CHOICE_ATTACKS`; scratch and label-smoothing students are in every audit)
   and the students, seeds and steps of an audit;
3. a row *holds* where its outputs add at most ``max_value`` points beyond labels (the mean over
   seeds of the per-seed difference, :func:`attacks.summary.value_beyond_labels`, for every student)
   and its served top-1 accuracy on the validation split is at most ``max_cost`` points below the
   undefended one;
4. the chosen row is the first that holds in the order of what it serves an honest user: no defence,
   then the candidates in their order (:data:`CANDIDATES`: every probability to a tenth, the two
   largest exactly, the two largest to a tenth), then labels alone (``top-1``, not audited: a
   thief of one-hot answers learns from labels).

The order is a preference, not a measurement: utility (the served NLL of :mod:`nasty.utility`)
cannot be measured on a split the teacher trained on, where it is near 100% accurate, and the test
set is not for choosing. The validation images are the teacher's training images, as the thief's
are: what the students learn is scored on images they never saw.

``out`` holds ``candidates/<name>/`` (each a run directory of ``nasty defend``), ``compare/`` (the
audits, resumed like ``nasty compare``), ``choice.json`` and ``choice.md``.
"""

from __future__ import annotations

from pathlib import Path

from nasty import checkpoint as ckpt
from nasty.errors import NastyError, one_line
from nasty.safety import md_text as md

from . import scale
from .summary import REFERENCE, value_beyond_labels

__all__ = ["CANDIDATES", "CHOICE_ATTACKS", "LABELS_ONLY", "choose_defence", "format_choice", "pick", "undecided"]

# the serving defences tried, by name (transforms of :mod:`nasty.defences`), most served first; top-1 is the
# fallback. Their served NLL on the test sets of bench/defences.py (round-1 / top-2 / top-2+round-1): digit
# pairs at 5% 0.043 / 0.056 / 0.048, at 10% 0.065 / 0.088 / 0.077, digits 0.016 / 0.016 / 0.014
CANDIDATES: dict[str, dict] = {
    "round-1": {"name": "round", "decimals": 1},
    "top-2": {"name": "topk", "k": 2},
    "top-2+round-1": {"name": "chain", "steps": [{"name": "topk", "k": 2}, {"name": "round", "decimals": 1}]},
}
LABELS_ONLY = ("top-1", {"name": "topk", "k": 1})
# the thieves: KD, KD with its temperature and weight searched and our breaker of defended answers read the
# outputs; the labels-only thief with its own search is the strongest student from labels on digit pairs
CHOICE_ATTACKS = ("kd", "kd-sweep", "recalibrate", "hard-label-sweep")


def choose_defence(*, teacher, train_fraction: float = 1.0, candidates: dict[str, dict] | list[str] | None = None,
                   attacks=CHOICE_ATTACKS, students=None, seeds=(0, 1, 2), student_steps: int | None = None,
                   attack_options: dict | None = None, validation: float = 0.2, max_value: float = 0.0,
                   max_cost: float = 1.0, out="runs/choice", device="auto", devices=None, quiet: bool = False,
                   force: bool = False, echo=None, data_root=None, download: bool = False) -> dict:
    """Measure the candidates on validation data and choose one (see the module doc); returns
    choice.json's dict: ``chosen`` (a name), ``transform`` (``None``: no defence), ``served`` (the run
    directory to serve; ``None`` for no defence), and one row per candidate. ``teacher`` is a run
    directory (of ``nasty train``, ``import`` or ``harden``); ``candidates``: names of
    :data:`CANDIDATES` or transforms by name, in order of preference (default: all of them)."""
    from nasty.defences import Defended, create_transform
    from nasty.recipes import recipe_for
    from nasty.released import open_models
    from nasty.safety import read_json
    from nasty.trainer import evaluate, resolve_device

    from .audit import student_schedule
    from .compare import compare

    candidates = _checked(candidates, validation=validation, max_cost=max_cost)
    src = ckpt.require_run(teacher, command="choose")
    out = Path(out).expanduser()
    [released], data = open_models({"teacher": src}, data_root=data_root, download=download)
    _, val = data.split_validation(validation, seed=0)  # the students train on the rest, scored on val
    if student_steps is None:  # the steps an audit of the whole training set gives its students
        recipe = recipe_for(data.name, data.num_classes)
        student_steps = student_schedule(data, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr).steps
    served = {name: _served(src, transform, out / "candidates" / name, force=force, data_root=data_root,
                            download=download) for name, transform in candidates.items()}
    result = compare(reference=src, teachers=list(served.values()), attacks=list(attacks), students=students,
                     seeds=tuple(seeds), student_steps=student_steps, attack_options=attack_options,
                     out=out / "compare", device=device, devices=devices, quiet=quiet, force=force, echo=echo,
                     plots=False, data=val, train_fraction=train_fraction)
    if not scale.writes():  # another process of a shared run writes the choice
        return result
    reports = {name: read_json(out / "compare" / "audits" / row["name"] / "report.json")
               for name, row in zip(served, result["rows"])}
    dev = resolve_device(device if devices is None else "cpu")
    top1 = Defended(released.model, create_transform(LABELS_ONLY[1])).to(dev).eval()
    rows = _rows(reports, result, candidates, served, src=src, top1_accuracy=evaluate(top1, val, device=dev)["accuracy"])
    chosen = pick(rows, max_value=max_value, max_cost=max_cost)
    if chosen["name"] == LABELS_ONLY[0]:  # labels alone: written as a run to serve like the others
        chosen["served"] = str(_served(src, LABELS_ONLY[1], out / "candidates" / LABELS_ONLY[0], force=force,
                                       data_root=data_root, download=download))
    choice = {"chosen": chosen["name"], "transform": chosen["transform"],
              "served": chosen["served"] if chosen["name"] != "none" else None,
              "teacher": str(src), "rows": rows,
              "settings": {"train_fraction": train_fraction, "validation": val.validation, "seeds": list(seeds),
                           "students": next(iter(reports.values()))["settings"]["students"],
                           "attacks": list(attacks), "student_steps": student_steps,
                           "max_value": max_value, "max_cost": max_cost}}
    ckpt.write_json(out / "choice.json", choice)
    text = format_choice(choice)
    ckpt.atomic_write(out / "choice.md", lambda p: Path(p).write_text(text + "\n"))
    return choice


def _checked(candidates, *, validation: float, max_cost: float) -> dict[str, dict]:
    """The candidates as transforms by name, once they and the settings are valid (before any work)."""
    from nasty.defences import create_transform
    from nasty.distributed import world

    candidates = CANDIDATES if candidates is None else candidates
    if not candidates:
        raise NastyError("`candidates`: give at least one serving defence to measure")
    if LABELS_ONLY[0] in candidates:
        raise NastyError(f"`candidates`: {LABELS_ONLY[0]} is the fallback (labels alone), not a candidate")
    if not isinstance(candidates, dict):  # names of CANDIDATES
        unknown = [n for n in candidates if n not in CANDIDATES]
        if unknown:
            raise NastyError(f"`candidates`: no defence {one_line(str(unknown[0]))[:40]!r}; "
                             f"choose from {', '.join(CANDIDATES)}")
        candidates = {n: CANDIDATES[n] for n in candidates}
    for transform in candidates.values():
        create_transform(transform)  # a malformed one fails before any training
    if not 0.0 < validation < 1.0:
        raise NastyError(f"`validation` must be a fraction in (0, 1), got {validation}")
    if not max_cost >= 0:
        raise NastyError(f"`max_cost` must be >= 0 points, got {max_cost}")
    if world().active:  # its candidates are written before the audits: one process, whose cells `devices` spreads
        raise NastyError("choosing a defence runs in one process, not under torchrun; spread its cells with `devices`")
    return dict(candidates)


def _rows(reports: dict, result: dict, candidates: dict, served: dict, *, src: Path, top1_accuracy: float) -> list[dict]:
    """choice.json's rows in order of preference: no defence (the audits' reference side), each
    candidate (its audit's teacher side), then labels alone (not audited)."""
    first = next(iter(reports.values()))
    students = first["settings"]["students"]
    undefended = first["teachers"][REFERENCE]["accuracy"]

    def value(report, side):
        per = {s: value_beyond_labels(report, s, side) for s in students}
        return {s: v for s, v in per.items() if v is not None}

    rows = [{"name": "none", "transform": None, "served": str(src), "accuracy": undefended, "cost": 0.0,
             "value": value(first, "reference")}]
    for (name, report), row in zip(reports.items(), result["rows"]):
        rows.append({"name": name, "transform": candidates[name], "served": str(served[name]),
                     "accuracy": row["accuracy"], "cost": row["cost"], "value": value(report, "teacher")})
    rows.append({"name": LABELS_ONLY[0], "transform": LABELS_ONLY[1], "served": None, "accuracy": top1_accuracy,
                 "cost": round(undefended - top1_accuracy, 4) + 0.0, "value": None})
    return rows


def _served(src: Path, transform: dict, run: Path, *, force: bool, data_root, download: bool) -> Path:
    """``run``: ``src`` served with ``transform`` (:func:`nasty.runs.defend`), made unless it is there already."""
    from nasty.runs import defend

    if force or not (run / ckpt.CARD).exists() or ckpt.read_card(run).get("output_transform") != transform:
        defend(teacher=src, transform=transform, out=run, force=True, data_root=data_root, download=download)
    return run


def pick(rows: list[dict], *, max_value: float, max_cost: float) -> dict:
    """The row to serve (marking each row's ``holds``): ``rows`` in order of preference, the first
    measured one whose outputs add at most ``max_value`` points beyond labels for every student
    (``value``, per student a mean over seeds) at a cost of at most ``max_cost`` points; where none
    holds, the labels-only row (``value`` ``None``), which holds by construction."""
    for r in rows:  # a measured row without any thief of its outputs (no value) does not hold
        r["holds"] = r["value"] is None or (bool(r["value"]) and r["cost"] <= max_cost
                                            and all(v["mean"] <= max_value for v in r["value"].values()))
    return next((r for r in rows if r["value"] is not None and r["holds"]),
                next(r for r in rows if r["value"] is None))


def format_choice(choice: dict) -> str:
    """choice.json as a markdown table, with the choice under it."""
    s = choice["settings"]
    students = s["students"]
    lines = [f"Serving defences on a validation split ({s['validation']['size']} images), the thief holding "
             f"{s['train_fraction']:g} of the rest, {len(s['seeds'])} seeds, students {md(' / '.join(students))}, "
             f"thieves {md(', '.join(s['attacks']))} and the labels-only students.", "",
             "| defence | accuracy | cost | outputs add beyond labels | holds |", "|---|---|---|---|---|"]
    for r in choice["rows"]:
        value = "labels alone" if r["value"] is None else " / ".join(
            f"{v['mean']:+.2f} ± {v['std']:.2f}" for v in (r["value"].get(st) for st in students) if v) or "-"
        lines.append(f"| {md(r['name'])} | {r['accuracy']:.2f} | {r['cost']:+.2f} | {value} | "
                     f"{'yes' if r['holds'] else 'no'} |")
    rule = (f"outputs add at most {s['max_value']:+g} points beyond labels, at most {s['max_cost']:g} points of "
            f"accuracy lost on validation; the first of those in this order")
    lines += ["", f"Chosen: **{md(choice['chosen'])}** ({rule})."]
    close = undecided(choice)
    if close:
        lines.append(f"Within one standard error of the target: {md(', '.join(close))}; more seeds may decide "
                     f"otherwise (the choice takes the mean as it is).")
    return "\n".join(lines)


def undecided(choice: dict) -> list[str]:
    """The rows before the chosen one (those it would have preferred) whose value, for some student,
    is within one standard error of the mean (std / sqrt(seeds)) above ``max_value``: more seeds may
    let them hold."""
    n, target = len(choice["settings"]["seeds"]), choice["settings"]["max_value"]
    names = []
    for r in choice["rows"]:
        if r["name"] == choice["chosen"]:
            break
        if r["value"] and not r["holds"] and all(v["mean"] - v["std"] / n ** 0.5 <= target for v in r["value"].values()):
            names.append(r["name"])
    return names
