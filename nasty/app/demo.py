"""``nasty demo``: the whole story on digits, on a CPU, in a few minutes.

    normal teacher -> nasty teacher (the strongest hardening within 1 point of validation accuracy,
    found by `nasty harden`'s budgeted search) -> audit (:data:`ATTACKS`: standard KD at the
    defender's temperature, a label-only thief, and the thieves who pick their own temperature and
    weight, on the soft outputs (kd-sweep) and on the top-1 answers (hard-label-sweep); the scratch
    and label-smoothing baselines; 2 students, 3 seeds)

The data-free attacks (dafl, deepinversion: ``nasty audit``'s default) are left out of the demo:
on 2 CPU cores they take about 6 of its minutes, and the adaptive thieves decide its worst case.

Every step writes to its own folder under ``out`` and is resumed or skipped when the demo runs
again; audit cells left with other settings (by an older version, or by the other of quick and
full) are redone. ``quick`` shrinks every budget and adds the data-free attacks, to check that every step runs
(a smoke test: its numbers mean nothing).
"""

from __future__ import annotations

from pathlib import Path

from nasty.errors import BudgetNotMet
from nasty.runs import harden, train

ATTACKS = ("kd", "hard-label", "kd-sweep", "hard-label-sweep")
# --quick checks that every step runs, the data-free attacks (and their images in the report) included
_QUICK_SEARCH = {"search_epochs": 1, "search_steps": 0}
QUICK = {"teacher_epochs": 3, "seeds": (0,), "student_epochs": 2, "attacks": ATTACKS + ("dafl", "deepinversion"),
         "attack_options": {"kd-sweep": _QUICK_SEARCH, "hard-label-sweep": _QUICK_SEARCH,
                            "deepinversion": {"pool_size": 64, "iterations": 5}}}


def run_demo(*, out="runs/demo", quick: bool = False, device: str = "auto", quiet: bool = False, echo=print) -> dict:
    from attacks.audit import audit

    out = Path(out)
    epochs = QUICK["teacher_epochs"] if quick else None
    normal = train(dataset="digits", out=out / "normal", epochs=epochs, device=device, resume=True, quiet=quiet)
    if not quiet:
        echo(f"normal teacher: {normal['accuracy']:.2f}% -> {out / 'normal'}")
    try:
        nasty = harden(teacher=out / "normal", out=out / "nasty", epochs=epochs, device=device, resume=True,
                       quiet=quiet, echo=echo)
    except BudgetNotMet as e:  # the cheapest strength tried was kept: audit it all the same
        echo(str(e))
        nasty = e.card
    if not quiet:
        echo(f"nasty teacher: {nasty['accuracy']:.2f}% (omega {nasty['omega']:g} for a budget of "
             f"{nasty['search']['max_cost']:g} points; test cost {nasty['teacher_cost']:+.2f} points) -> {out / 'nasty'}")
    # force: cells that an older version or the other mode (quick / full) left with other settings are redone;
    # finished cells with these settings are kept and a cell in training goes on
    return audit(teacher=out / "nasty", reference=out / "normal", out=out / "audit", device=device, quiet=quiet,
                 force=True,
                 attacks=QUICK["attacks"] if quick else ATTACKS,
                 seeds=QUICK["seeds"] if quick else (0, 1, 2), epochs=QUICK["student_epochs"] if quick else None,
                 attack_options=QUICK["attack_options"] if quick else None)
