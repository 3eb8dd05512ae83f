"""The defences side by side on a protection-benchmark setting where the outputs carry value.

    python bench/defences.py --out runs/defences [--seeds 3] [--setting digits-quick] [--index 0] [--only none,round1]

On a setting of ``bench/protection.py``'s suite (its first, or the one ``--index`` names; by default
digit pairs, a thief holding 10% of the pairs, tiny-cnn students at the recipe's 1,860 steps), with
its normal teacher (trained or reused under ``out/teachers``), this makes:

- the nasty teacher (``nasty harden``'s defaults: the budgeted search) and the CMIM teacher
  (``--method cmim``, the same search), and the nasty teacher chosen by the audit's measure
  (``--select value``); where no strength meets the budget, the cheapest tried; and
  teachers of a fixed strength beyond the budget (nasty omega 0.05, 0.1; CMIM weight 160, 640), for the
  frontier of cost and value;
- serving-time defences of the normal teacher (``nasty defend``): stingy top-1 and top-2,
  reverse-sigmoid (beta 1, gamma 0.1), probabilities rounded to 1 decimal, and the two stacked (the
  top two probabilities, rounded to 1 decimal);
- one combination: the nasty teacher served top-2;

then audits each against the normal teacher with the setting's thieves and our breaker
(``recalibrate``) (``attacks.compare``;
the normal teacher against itself is the row of no defence). Per defence: what its outputs add
beyond labels under the best response (mean and std over seeds of the per-seed difference,
:func:`attacks.summary.value_beyond_labels`), its cost, and what an honest user gets (served NLL, ECE, top-5).
Writes ``defences.json`` and ``defences.md`` in ``out``; everything resumes.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

BENCH = Path(__file__).resolve().parent
for p in (BENCH.parent, BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from protection import SUITES, Setting  # noqa: E402

from attacks.choose import CANDIDATES, LABELS_ONLY  # noqa: E402
from attacks.summary import value_beyond_labels  # noqa: E402
from nasty import checkpoint as ckpt  # noqa: E402
from nasty.errors import BudgetNotMet, NastyError, one_line  # noqa: E402

BREAKERS = ("recalibrate",)  # our breaker of hardened teachers (attacks/recalibrate.py), beside the setting's thieves
# teachers of a fixed strength beyond the 1-point budget: (method, strength, name); the search from CMIM's
# start (10) stops at its third trial, 40, still affordable, so CMIM's frontier is 4x and 16x that
FIXED = (("nasty", 0.05, "nasty-omega0.05"), ("nasty", 0.1, "nasty-omega0.1"),
         ("cmim", 160.0, "cmim-weight160"), ("cmim", 640.0, "cmim-weight640"))
SERVED = {  # name -> output transform of the normal (or nasty) teacher; those nasty choose tries are its own
    "stingy-top1": LABELS_ONLY[1],
    "stingy-top2": CANDIDATES["top-2"],
    "reverse-sigmoid": {"name": "reverse-sigmoid", "beta": 1.0, "gamma": 0.1},
    "round1": CANDIDATES["round-1"],
    "top2+round1": CANDIDATES["top-2+round-1"],
}


HARDENED = (("nasty", "nasty", "damage"), ("cmim", "cmim", "damage"), ("nasty-value", "nasty", "value"))
NAMES = ("none", *(h[0] for h in HARDENED), *(f[2] for f in FIXED), *SERVED, "nasty+top2")  # every defence


def teachers(setting: Setting, out: Path, *, device: str, quiet: bool,
             only: list[str] | None = None) -> tuple[Path, dict[str, Path]]:
    """The normal teacher and the defended ones, by name (each trained, hardened or served once);
    ``only``: those named (and what they are made from), not the others."""
    from nasty.runs import defend, harden, train
    from nasty.search import METHODS, Budget

    def wanted(label):
        needs = {"nasty": ("nasty", "nasty-value", "nasty+top2")}.get(label, (label,))
        return only is None or any(n in only for n in needs)

    name = f"{setting.dataset}-{setting.teacher_arch}-{setting.teacher_epochs or 'recipe'}epochs"
    normal = out / "teachers" / name
    train(dataset=setting.dataset, arch=setting.teacher_arch, epochs=setting.teacher_epochs, out=normal,
          resume=True, device=device, quiet=quiet)
    made = {"none": normal}
    for label, method, select in (h for h in HARDENED if wanted(h[0])):
        made[label] = out / "hardened" / f"{name}-{label}"
        try:
            harden(teacher=normal, method=method, budget=Budget(select=select), out=made[label],
                   epochs=setting.teacher_epochs, resume=True, device=device, quiet=quiet,
                   echo=None if quiet else print)
        except BudgetNotMet:  # the cheapest strength tried is kept: what the defaults give
            pass
    if only is None and "nasty-value" in made and _strength(made["nasty-value"]) == _strength(made["nasty"]):
        kept = _strength(made["nasty"])  # the same settings: nothing new to audit
        print(f"nasty-value: the search kept omega {kept[1]:g}, as nasty's did (the same settings): audited once")
        del made["nasty-value"]
    for method, strength, label in (f for f in FIXED if wanted(f[2])):  # past the budget: where the frontier goes at a higher cost
        run = out / "hardened" / f"{name}-{label}"
        try:
            harden(teacher=normal, method=method, **{METHODS[method]: strength}, out=run, epochs=setting.teacher_epochs,
                   resume=True, device=device, quiet=quiet)
        except NastyError as e:  # a strength that collapses is a point the frontier does not have
            print(f"{label}: left out ({one_line(e)})")
            continue
        made[label] = run
    for served, transform in ((k, v) for k, v in SERVED.items() if wanted(k)):
        made[served] = out / "served" / f"{name}-{served}"
        if not (made[served] / "card.json").exists():
            defend(teacher=normal, transform=transform, out=made[served])
    if wanted("nasty+top2"):
        made["nasty+top2"] = out / "served" / f"{name}-nasty-top2"
        if not (made["nasty+top2"] / "card.json").exists():
            defend(teacher=made["nasty"], transform=SERVED["stingy-top2"], out=made["nasty+top2"])
    if only is not None:
        made = {n: made[n] for n in made if n in only}
    return normal, made


def _strength(run: Path) -> tuple:
    card = ckpt.read_card(run)
    return card.get("method", "nasty"), card.get("omega"), card.get("cmi_weight"), card.get("tau")


def rows_of(result: dict, names: list[str], setting: Setting, out: Path) -> list[dict]:
    """One row per defence and student: value beyond labels (mean, std over seeds), cost, utility."""
    from nasty.safety import read_json

    rows = []
    for name, row in zip(names, result["rows"]):
        report = read_json(out / "compare" / "audits" / row["name"] / "report.json")
        for student in setting.students:
            rows.append({"defence": name, "served": row["defence"] or "none", "student": student,
                         "accuracy": row["accuracy"], "cost": row["cost"], "utility": row.get("utility"),
                         "teacher_adds": value_beyond_labels(report, student, "teacher"),
                         "breakers": {r["attack"]: r["acc_from_nasty"] for r in report["summary"]
                                      if r["student"] == student and r["attack"] in BREAKERS},
                         "worst_case": row["worst_case"][student]})
    return rows


def attacks_of(setting: Setting) -> list[str]:
    """The setting's thieves and the breakers."""
    return list(setting.attacks) + [a for a in BREAKERS if a not in setting.attacks]


def format_markdown(rows: list[dict], setting: Setting) -> str:
    head = ["defence", "served as", "student", "accuracy", "cost", "served NLL", "ECE", "top-5",
            "outputs add beyond labels (best response)", "worst case", *BREAKERS]
    lines = [f"{setting.name}, {setting.seeds} seeds, attacks {', '.join(attacks_of(setting))}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        u, a, w = r["utility"] or {}, r["teacher_adds"], r["worst_case"]
        lines.append("| " + " | ".join([
            r["defence"], r["served"], r["student"], f"{r['accuracy']:.2f}", f"{r['cost']:+.2f}",
            *(f"{u[k]:.3f}" if k in u else "-" for k in ("nll", "ece")), f"{u['top5']:.2f}" if "top5" in u else "-",
            "-" if a is None else f"{a['mean']:+.2f} ± {a['std']:.2f} ({a['outputs']} vs {a['labels']})",
            f"{w['acc_from_teacher']:.2f} ({w['attack']})",
            *(f"{r['breakers'][b]['mean']:.2f}" if b in r.get("breakers", {}) else "-" for b in BREAKERS)]) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the runs and the table.")
@click.option("--setting", "suite", default="digits-quick", show_default=True,
              help="The suite of bench/protection.py whose setting is used.")
@click.option("--index", type=click.IntRange(0), default=0, show_default=True,
              help="Which of the suite's settings (0: the first).")
@click.option("--seeds", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--devices", default=None, help="The audits' cells over one worker per device (cpu,cpu: 2 processes).")
@click.option("--only", default=None,
              help="Comma-separated defences to audit (e.g. none,round1 with more --seeds); their table goes to "
                   "defences-only.json and .md, beside the full one.")
@click.option("--quiet", is_flag=True)
def main(out, suite, index, seeds, device, devices, only, quiet):
    """Every defence on one setting where the outputs carry value; defences.json and defences.md."""
    from attacks.compare import compare

    if suite not in SUITES:
        raise click.ClickException(f"--setting: unknown suite {one_line(suite)[:40]!r}; choose one of {', '.join(SUITES)}")
    if index >= len(SUITES[suite]):
        raise click.ClickException(f"--index: {suite} has {len(SUITES[suite])} settings (0 to {len(SUITES[suite]) - 1})")
    setting = dataclasses.replace(SUITES[suite][index], seeds=seeds)
    out = Path(out).expanduser()
    t0 = time.perf_counter()
    try:
        names = only.split(",") if only else None
        unknown = [n for n in names or () if n not in NAMES]
        if unknown:
            raise click.ClickException(f"--only: no defence {one_line(unknown[0])[:40]!r}; choose from {', '.join(NAMES)}")
        normal, made = teachers(setting, out, device=device, quiet=quiet, only=names)
        result = compare(reference=normal, teachers=list(made.values()), attacks=attacks_of(setting),
                         students=list(setting.students), seeds=tuple(range(seeds)),
                         student_steps=setting.student_steps, attack_options=setting.attack_options,
                         train_fraction=setting.share, out=out / "compare", quiet=quiet, plots=True,
                         **({"devices": devices} if devices else {"device": device}))
        rows = rows_of(result, list(made), setting, out)
    except NastyError as e:
        raise click.ClickException(one_line(e)) from None
    stem = "defences-only" if only else "defences"
    ckpt.write_json(out / f"{stem}.json", {"setting": dataclasses.asdict(setting), "rows": rows,
                                           "seconds": round(time.perf_counter() - t0, 1)})
    text = format_markdown(rows, setting)
    ckpt.atomic_write(out / f"{stem}.md", lambda p: Path(p).write_text(text + "\n"))
    click.echo(text)
    click.echo(f"{len(made)} defences in {time.perf_counter() - t0:.1f} s -> {out}/{stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
