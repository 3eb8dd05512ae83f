"""Does a serving defence chosen on validation data hold on the test set?

    python bench/choose_transfer.py --teacher runs/defences-digits/teachers/digits-small-cnn-recipeepochs \
        --setting digits --index 3 --test bench/results/defences_digits_10seeds.json \
        --out runs/choose-digits --json bench/results/choose_digits.json --devices cpu,cpu

Runs :func:`attacks.choose.choose_defence` on one setting of ``bench/protection.py``'s suites (its
share, students and thieves, with our breaker ``recalibrate`` as ``bench/defences.py`` adds it) for a
normal teacher ``bench/defences.py`` made, so every number of the choice comes from a validation split
of the training set. Beside each candidate it puts what ``bench/defences.py`` measured for the same
teacher on the test set (``--test``: its defences.json; the same students and thieves), so the JSON
says whether the choice made without the test set holds on it. Selects nothing from the test set.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import click

BENCH = Path(__file__).resolve().parent
for p in (BENCH.parent, BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from defences import SERVED, attacks_of  # noqa: E402
from protection import SUITES  # noqa: E402

from attacks.choose import CANDIDATES, LABELS_ONLY  # noqa: E402
from nasty import checkpoint as ckpt  # noqa: E402
from nasty.errors import NastyError, one_line  # noqa: E402

# attacks.choose's names -> bench/defences.py's: the serving defence of the same transform
BENCH_NAMES = {"none": "none", **{name: bench for name, t in (*CANDIDATES.items(), LABELS_ONLY)
                                  for bench, served in SERVED.items() if served == t}}


def test_side(path: Path | None) -> dict:
    """Per bench/defences.py name, what its test audit measured: value beyond labels, cost, served NLL."""
    if path is None:
        return {}
    doc = json.loads(path.read_text())
    return {r["defence"]: {"adds": r["teacher_adds"], "cost": r["cost"], "nll": (r["utility"] or {}).get("nll"),
                           "seeds": doc["setting"]["seeds"]} for r in doc["rows"]}


@click.command()
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--setting", "suite", default="digits-quick", show_default=True)
@click.option("--index", type=click.IntRange(0), default=0, show_default=True)
@click.option("--seeds", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--test", "test_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="bench/defences.py's JSON for this teacher and setting (the test side).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--devices", default=None)
def main(teacher, suite, index, seeds, test_json, out, json_out, device, devices):
    from attacks.choose import choose_defence, format_choice

    if suite not in SUITES or index >= len(SUITES[suite]):
        raise click.ClickException(f"no setting {one_line(suite)[:40]!r} #{index}")
    setting = dataclasses.replace(SUITES[suite][index], seeds=seeds)
    t0 = time.perf_counter()
    try:
        choice = choose_defence(teacher=teacher, train_fraction=setting.share, attacks=attacks_of(setting),
                                students=list(setting.students), seeds=tuple(range(seeds)),
                                student_steps=setting.student_steps, attack_options=setting.attack_options,
                                out=out, device=device, devices=devices.split(",") if devices else None, quiet=True)
    except NastyError as e:
        raise click.ClickException(one_line(e)) from None
    tested = test_side(Path(test_json) if test_json else None)
    for row in choice["rows"]:
        row["test"] = tested.get(BENCH_NAMES.get(row["name"], row["name"]))
    chosen = next(r for r in choice["rows"] if r["name"] == choice["chosen"])
    doc = {"setting": dataclasses.asdict(setting), "teacher": teacher, "chosen": choice["chosen"],
           "chosen_on_test": chosen["test"], "rows": choice["rows"], "settings": choice["settings"],
           "seconds": round(time.perf_counter() - t0, 1)}
    if json_out:
        ckpt.write_json(Path(json_out), doc)
    click.echo(format_choice(choice))
    if chosen["test"] and chosen["test"].get("adds"):
        a = chosen["test"]["adds"]
        click.echo(f"on the test set ({chosen['test']['seeds']} seeds): outputs add {a['mean']:+.2f} ± {a['std']:.2f} "
                   f"beyond labels, cost {chosen['test']['cost']:+.2f}, served NLL {chosen['test']['nll']}")
    click.echo(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
